"""Generalized Jensen-Shannon divergence (GKD's form), teacher weight beta.

m = beta·p + (1 - beta)·q;  JSD_beta = beta·KL(p || m) + (1 - beta)·KL(q || m).
beta = 0.1 is the released AdaKD code's mixture (m = 0.1 p + 0.9 q). The endpoints beta = 0 and
beta = 1 are identically zero; near them JSD_beta / beta -> KL(p || q) and
JSD_beta / (1 - beta) -> KL(q || p).
"""

from __future__ import annotations

from torch import Tensor

from .base import Divergence, check_range, kl_rows, log_mix


class JensenShannon(Divergence):
    name = "jsd"
    defaults = {"beta": 0.1}

    def _validate(self) -> None:
        check_range(self.name, "beta", self.beta, 0.0, 1.0)

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        lm = log_mix(lp, lq, self.beta)
        return self.beta * kl_rows(lp, lm) + (1.0 - self.beta) * kl_rows(lq, lm)
