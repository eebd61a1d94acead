"""Reverse KL: KL(q || p) = sum_v q_v (log q_v - log p_v) (student q, teacher p)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import Divergence, compute_dtype, kl_rows, log_floor, log_probs


class ReverseKL(Divergence):
    name = "rkl"
    defaults = {}
    has_analytic_grad = True

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return kl_rows(lq, lp)

    def value_and_grad(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        overwrite: Tuple[bool, bool] = (False, False),
        scratch: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor]:
        # With d_v = log q_v - log p_v: d/ds_j sum_v q_v d_v = q_j (e_j - sum_v q_v e_v), e = d + 1.
        # log p = -inf is floored (a constant), so e = d + 1 holds on every slot with q_v > 0; where
        # q_v = 0 the factor q_j makes it irrelevant. Two [N, V] buffers are reused in place: lp
        # becomes d, then e; lq becomes q, then the gradient. The products q·d and q·e go to a third
        # (the scratch where given).
        dtype = compute_dtype(student_logits, teacher_logits)
        lq = log_probs(student_logits.detach(), dtype, overwrite[0])
        lp = log_probs(teacher_logits.detach(), dtype, overwrite[1])
        tmp = None if scratch is None else scratch[0][: lq.shape[0]]
        nan = float("nan")
        lp.nan_to_num_(nan=nan, neginf=log_floor(dtype))
        d = lp.neg_().add_(lq).nan_to_num_(nan=nan, neginf=0.0)
        q = lq.exp_()
        values = torch.mul(q, d, out=tmp).sum(-1)
        e = d.add_(1.0)
        grad = q.mul_(e.sub_(torch.mul(q, e, out=tmp).sum(-1, keepdim=True)))
        return values, grad
