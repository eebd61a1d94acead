"""Skew forward KL (DistiLLM): KL(p || alpha·p + (1 - alpha)·q).

The true KL, teacher-entropy term included (the released code's version is a cross-entropy: the
same gradient for the student, a different logged value). alpha = 0 is exactly fkl.
"""

from __future__ import annotations

from torch import Tensor

from .base import Divergence, check_range, kl_rows, log_mix


class SkewForwardKL(Divergence):
    name = "sfkl"
    defaults = {"alpha": 0.1}

    def _validate(self) -> None:
        # alpha = 1 would compare p with itself: identically zero, never a useful loss.
        check_range(self.name, "alpha", self.alpha, 0.0, 1.0, hi_open=True)

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return kl_rows(lp, log_mix(lp, lq, self.alpha))
