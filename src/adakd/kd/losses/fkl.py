"""Forward KL: KL(p || q) = sum_v p_v (log p_v - log q_v) (teacher p, student q)."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .base import Divergence, compute_dtype, kl_rows, log_probs, log_ratio


class ForwardKL(Divergence):
    name = "fkl"
    defaults = {}
    has_analytic_grad = True

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        return kl_rows(lp, lq)

    def value_and_grad(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        overwrite: Tuple[bool, bool] = (False, False),
        scratch: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor]:
        # d/ds_j sum_v p_v (log p_v - log q_v) = q_j * P - p_j * m_j, where m_j = 1 on slots the
        # student can reach (a floored log 0 is a constant: no gradient) and P = sum_v p_v m_v (= 1 normally).
        dtype = compute_dtype(student_logits, teacher_logits)
        lq = log_probs(student_logits.detach(), dtype, overwrite[0])
        lp = log_probs(teacher_logits.detach(), dtype, overwrite[1])
        reach = lq.isfinite()
        d = log_ratio(lp, lq)
        p = lp.exp_()
        values = d.mul_(p).sum(-1)
        del d
        pm = p.mul_(reach)
        grad = lq.exp_().mul_(pm.sum(-1, keepdim=True)).sub_(pm)
        return values, grad
