"""Skew reverse KL (DistiLLM): KL(q || alpha·q + (1 - alpha)·p). alpha = 0 is exactly rkl."""

from __future__ import annotations

from torch import Tensor

from .base import Divergence, check_range, kl_rows, log_mix


class SkewReverseKL(Divergence):
    name = "srkl"
    defaults = {"alpha": 0.1}

    def _validate(self) -> None:
        check_range(self.name, "alpha", self.alpha, 0.0, 1.0, hi_open=True)

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return kl_rows(lq, log_mix(lq, lp, self.alpha))
