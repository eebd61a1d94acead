"""Reverse KL: KL(q || p) = sum_v q_v (log q_v - log p_v) (student q, teacher p)."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .base import Divergence, compute_dtype, kl_rows, log_probs


class ReverseKL(Divergence):
    name = "rkl"
    defaults = {}
    has_analytic_grad = True

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return kl_rows(lq, lp)

    def value_and_grad(self, student_logits: Tensor, teacher_logits: Tensor) -> Tuple[Tensor, Tensor]:
        # With d_v = log q_v - log p_v: d/ds_j sum_v q_v d_v = q_j (e_j - sum_v q_v e_v), e = d + 1
        # on slots the teacher can reach; a dropped +inf term (p_v = 0) has e_v = 0. Two [N, V]
        # buffers are reused in place: lp becomes d then the gradient, lq becomes q.
        dtype = compute_dtype(student_logits, teacher_logits)
        lq = log_probs(student_logits.detach(), dtype)
        lp = log_probs(teacher_logits.detach(), dtype)
        reach = lp.isfinite()
        d = lp.neg_().add_(lq).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        q = lq.exp_()
        values = (q * d).sum(-1)
        e = d.add_(reach)
        grad = e.sub_((q * e).sum(-1, keepdim=True)).mul_(q)
        return values, grad
