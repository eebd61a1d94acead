"""Adaptive KL (AKL, Wu et al. 2024, "Rethinking KL divergence in KD for LLMs").

Per token: sort the teacher probabilities in descending order (stable sort, ties keep vocabulary
order); the head is the smallest prefix whose cumulative teacher mass reaches mu (cumulative
>= mu), the tail is everything else. With the absolute errors |p_v - q_v|:
    g_head = sum over head, g_tail = sum over tail,
    w_head = g_head / (g_head + g_tail), w_tail = 1 - w_head  (0.5 / 0.5 when both are 0),
    AKL = w_head · KL(p || q) + w_tail · KL(q || p),
with the weights detached (no gradient flows through the head/tail split). The released AdaKD
code puts the slot that crosses mu into the tail (head = cumulative <= mu, plus the top slot); here
it belongs to the head, as "smallest prefix reaching mu" says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Divergence, check_range, kl_rows


class AdaptiveKL(Divergence):
    name = "akl"
    defaults = {"mu": 0.5}

    def _validate(self) -> None:
        check_range(self.name, "mu", self.mu, 0.0, 1.0, lo_open=True)

    def head_weight(self, lq: Tensor, lp: Tensor) -> Tensor:
        with torch.no_grad():
            p, q = lp.exp(), lq.exp()
            p_sorted, order = torch.sort(p, dim=-1, descending=True, stable=True)
            # exclusive prefix sums (mass strictly before each slot), without cumsum - p rounding
            mass_before = F.pad(p_sorted.cumsum(-1)[..., :-1], (1, 0))
            head = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, mass_before < self.mu)
            err = (p - q).abs()
            g_head = (err * head).sum(-1)
            total = err.sum(-1)
            return torch.where(
                total > 0, g_head / total.clamp_min(torch.finfo(p.dtype).tiny), torch.full_like(total, 0.5)
            )

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        w_head = self.head_weight(lq, lp)
        return w_head * kl_rows(lp, lq) + (1.0 - w_head) * kl_rows(lq, lp)
