"""Alpha-beta divergence (ABKD, Wang et al. 2025; Cichocki et al. 2011), teacher p, student q.

alpha, beta > 0:
    D = -1/(alpha·beta) · sum_v [ p^alpha q^beta - alpha/(alpha+beta) p^(alpha+beta)
                                  - beta/(alpha+beta) q^(alpha+beta) ]
and the continuous limits on the edges of the valid region:
    beta = 0:  1/alpha^2 · sum_v [ p^alpha log(p^alpha / q^alpha) - p^alpha + q^alpha ]
    alpha = 0: 1/beta^2  · sum_v [ q^beta log(q^beta / p^beta) - q^beta + p^beta ]
so (alpha, beta) = (1, 0) is KL(p || q), (0, 1) is KL(q || p), and (0.5, 0.5) is
2·sum (sqrt p - sqrt q)^2 (4x squared Hellinger). Powers are taken as exp(alpha·log p), which
is exact for tiny probabilities and gives zero (with zero gradient) on -inf slots; the log terms of
the edge cases follow the log-0 floor of `base.log_ratio`. Negative alpha or beta are refused:
they make every zero-probability slot infinite.
"""

from __future__ import annotations

from torch import Tensor

from .base import Divergence, log_ratio


class AlphaBeta(Divergence):
    name = "abkd"
    defaults = {"alpha": 0.2, "beta": 0.7}

    def _validate(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ValueError(
                f"{self.name}: alpha and beta must be >= 0 and not both 0, got "
                f"alpha={self.alpha:g}, beta={self.beta:g}"
            )

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        a, b = self.alpha, self.beta
        if b == 0.0:
            pa = (a * lp).exp()
            return (pa * a * log_ratio(lp, lq) - pa + (a * lq).exp()).sum(-1) / (a * a)
        if a == 0.0:
            qb = (b * lq).exp()
            return (qb * b * log_ratio(lq, lp) - qb + (b * lp).exp()).sum(-1) / (b * b)
        s = a + b
        cross = (a * lp + b * lq).exp()
        bracket = cross - (a / s) * (s * lp).exp() - (b / s) * (s * lq).exp()
        return bracket.sum(-1) / (-a * b)
