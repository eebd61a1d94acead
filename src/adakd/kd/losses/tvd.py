"""Total variation distance: 1/2 sum_v |p_v - q_v|."""

from __future__ import annotations

from torch import Tensor

from .base import Divergence


class TotalVariation(Divergence):
    name = "tvd"
    defaults = {}

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
