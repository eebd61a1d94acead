"""The memory-bounded losses: mean_i tau_i^2 D_i over the kept rows, gradients produced during the forward.

- `ChunkedLogitsLoss` takes [N, V] logits: each chunk's value and its gradient w.r.t. the student rows are
  computed at once (`values_and_grads`), written into one gradient buffer, and handed to autograd in
  backward; so only O(chunk x V) temporaries exist besides that buffer.
- its counterpart from final hidden states and LM-head weights, `fused.FusedHiddenLoss`, shares `Plan`.
Both support one backward pass (the buffers are handed over, not copied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import Tensor

from ..losses import Divergence
from .chunks import Chunk
from .token_values import token_values, values_and_grads


@dataclass
class Plan:
    div: Divergence
    src: Any
    chunks: List[Chunk]
    n_kept: int
    standardize: bool
    kept: Optional[Tensor] = None  # flat indices of the kept tokens (the fused path's two phases)
    chunk_size: int = 0


def grad_scale(grad_loss: Tensor, n_kept: int) -> Optional[float]:
    scale = float(grad_loss) / n_kept
    return None if scale == 1.0 else scale


class ChunkedLogitsLoss(torch.autograd.Function):
    """mean_i tau_i^2 D_i over the kept rows of [N, V] logits; grad buffer filled during forward."""

    @staticmethod
    def forward(ctx, student: Tensor, tau: Optional[Tensor], plan: Plan):
        want_s = ctx.needs_input_grad[0]
        want_tau = tau is not None and ctx.needs_input_grad[1]
        per = torch.empty(plan.n_kept, dtype=plan.src.dtype, device=plan.src.device)
        grad_s = plan.src.grad_buffer(plan.n_kept) if want_s else None
        grad_tau = (
            torch.zeros(plan.n_kept, dtype=plan.src.dtype, device=plan.src.device) if want_tau else None
        )
        for ch in plan.chunks:
            s_rows, t_rows = plan.src.student(ch), plan.src.teacher(ch)
            tau_c = None if tau is None else tau[ch.start : ch.start + ch.index.numel()]
            stop = ch.start + ch.index.numel()
            if want_s or want_tau:
                values, g, g_tau = values_and_grads(
                    plan.div, s_rows, t_rows, tau_c, plan.standardize, want_tau, plan.src.owned(ch)
                )
                if want_s:
                    plan.src.write_grad(grad_s, ch, g, plan.src.v)
                if want_tau:
                    grad_tau[ch.start : stop] = g_tau
                del g
            else:
                values = token_values(plan.div, s_rows, t_rows, tau_c, plan.standardize)
            per[ch.start : stop] = values
        ctx.grads = [grad_s, grad_tau]
        ctx.n_kept = plan.n_kept
        ctx.mark_non_differentiable(per)
        return per.mean(), per

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_per: Tensor):
        if ctx.grads is None:
            raise RuntimeError(
                "the chunked KD loss supports a single backward pass (use impl='reference' "
                "to differentiate it twice)"
            )
        grad_s, grad_tau = ctx.grads
        ctx.grads = None  # hand the buffers over: no second [N, V] copy
        scale = grad_scale(grad_loss, ctx.n_kept)
        for g in (grad_s, grad_tau):
            if g is not None and scale is not None:
                g.mul_(scale)
        return grad_s, grad_tau, None
