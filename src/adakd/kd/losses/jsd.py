"""Generalized Jensen-Shannon divergence (GKD's form), teacher weight beta.

m = beta·p + (1 - beta)·q;  JSD_beta = beta·KL(p || m) + (1 - beta)·KL(q || m).
beta = 0.1 is the released AdaKD code's mixture (m = 0.1 p + 0.9 q). The endpoints beta = 0 and
beta = 1 are identically zero; near them JSD_beta / beta -> KL(p || q) and
JSD_beta / (1 - beta) -> KL(q || p).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import Divergence, check_range, compute_dtype, kl_rows, log_mix, log_probs


class JensenShannon(Divergence):
    name = "jsd"
    defaults = {"beta": 0.1}
    has_analytic_grad = True

    def _validate(self) -> None:
        check_range(self.name, "beta", self.beta, 0.0, 1.0)

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        lm = log_mix(lp, lq, self.beta)
        return self.beta * kl_rows(lp, lm) + (1.0 - self.beta) * kl_rows(lq, lm)

    def value_and_grad(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        overwrite: Tuple[bool, bool] = (False, False),
        scratch: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor]:
        # With m = beta p + (1 - beta) q, d JSD / d q_v = (1 - beta) log(q_v / m_v): the two terms
        # through m cancel (beta p_v / m_v + (1 - beta) q_v / m_v = 1). Through the softmax:
        #   d/ds_j = (1 - beta) q_j (r_j - KL(q || m)),   r = log q - log m.
        # The values repeat the ops of `from_log_probs` (log_mix, log_ratio, kl_rows) in place, so they
        # are bit-identical; r is 0 where q = 0 (log_ratio's rule), so -inf student logits get a zero
        # gradient, as under autograd. Four [n, V] buffers: lq and lp (the inputs' own where `overwrite`
        # allows), lm and x (the scratch where given; x holds b, rp, p·rp, then q·r). The gradient ends in lq's.
        beta = self.beta
        if beta in (0.0, 1.0):  # m is q or p: the generic path (value and gradient are 0)
            return super().value_and_grad(student_logits, teacher_logits)
        dtype = compute_dtype(student_logits, teacher_logits)
        nan, low = float("nan"), torch.finfo(dtype).min / 4
        n = student_logits.shape[0]
        lq = log_probs(student_logits.detach(), dtype, overwrite[0])
        lp = log_probs(teacher_logits.detach(), dtype, overwrite[1])
        a, x = (None, None) if scratch is None else (scratch[0][:n], scratch[1][:n])
        # log_mix(lp, lq, beta), in place: the clamps keep lm finite, so log_ratio's floor of -inf is a no-op
        lm = torch.add(lp, math.log(beta), out=a).clamp_min_(low)
        x = torch.add(lq, math.log1p(-beta), out=x).clamp_min_(low)
        lm = torch.logaddexp(lm, x, out=lm)
        rp = torch.sub(lp, lm, out=x).nan_to_num_(nan=nan, neginf=0.0)  # log_ratio(lp, lm)
        kl_p = torch.mul(lp.exp_(), rp, out=x).sum(-1)  # kl_rows(lp, lm)
        del rp, lp
        r = torch.sub(lq, lm, out=lm).nan_to_num_(nan=nan, neginf=0.0)  # log_ratio(lq, lm)
        q = lq.exp_()
        kl_q = torch.mul(q, r, out=x).sum(-1)  # kl_rows(lq, lm)
        del x
        values = beta * kl_p + (1.0 - beta) * kl_q
        grad = q.mul_(r.sub_(kl_q.unsqueeze(-1))).mul_(1.0 - beta)
        return values, grad
