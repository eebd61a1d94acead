"""The memory-bounded losses: mean_i tau_i^2 D_i over the kept rows, gradients produced during the forward.

- `ChunkedLogitsLoss` takes [N, V] logits: each chunk's value and its gradient w.r.t. the student rows are
  computed at once (`values_and_grads`), written into one gradient buffer, and handed to autograd in
  backward; so only O(chunk x V) temporaries exist besides that buffer.
- `FusedHiddenLoss` takes final hidden states and LM-head weights: each chunk's logits are computed,
  used and dropped, and dL/dhidden, dL/dW, dL/db are accumulated directly; the [N, V] logits never exist.
Both support one backward pass (the buffers are handed over, not copied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import Tensor

from ..losses import Divergence
from .chunks import Chunk
from .rows import HiddenRows
from .token_values import token_values, values_and_grads


@dataclass
class Plan:
    div: Divergence
    src: Any
    chunks: List[Chunk]
    n_kept: int
    standardize: bool


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


class FusedHiddenLoss(torch.autograd.Function):
    """The same loss from hidden states and LM-head weights; logits exist one chunk at a time."""

    @staticmethod
    def forward(ctx, hs: Tensor, ws: Tensor, bs: Optional[Tensor], tau: Optional[Tensor], plan: Plan):
        src: HiddenRows = plan.src
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bs is not None and ctx.needs_input_grad[2]
        want_tau = tau is not None and ctx.needs_input_grad[3]
        any_grad = want_h or want_w or want_b or want_tau
        per = torch.empty(plan.n_kept, dtype=src.dtype, device=src.device)
        # Accumulate weight gradients in float32 at least (one rounding at the end, like one big matmul).
        acc = torch.promote_types(ws.dtype, torch.float32)
        grad_h = torch.zeros_like(src.hs) if want_h else None
        grad_w = torch.zeros(ws.shape, dtype=acc, device=ws.device) if want_w else None
        grad_b = torch.zeros(bs.shape, dtype=acc, device=bs.device) if want_b else None
        grad_tau = torch.zeros(plan.n_kept, dtype=src.dtype, device=src.device) if want_tau else None
        ws_v = src.ws.detach()
        for ch in plan.chunks:
            stop = ch.start + ch.index.numel()
            tau_c = None if tau is None else tau[ch.start : stop]
            s_rows, t_rows = src.student(ch), src.teacher(ch)
            if not any_grad:
                per[ch.start : stop] = token_values(plan.div, s_rows, t_rows, tau_c, plan.standardize)
                continue
            values, g, g_tau = values_and_grads(
                plan.div, s_rows, t_rows, tau_c, plan.standardize, want_tau, plan.src.owned(ch)
            )
            del s_rows, t_rows
            per[ch.start : stop] = values
            if want_tau:
                grad_tau[ch.start : stop] = g_tau
            if want_h:
                gh = g.to(ws_v.dtype) @ ws_v
                if ch.span is not None:
                    grad_h[ch.span[0] : ch.span[1]] = gh
                else:
                    grad_h.index_copy_(0, ch.index, gh.to(grad_h.dtype))
                del gh
            if want_w:
                h_c = src.student_hidden(ch).to(acc)
                grad_w[: src.v].addmm_(g.to(acc).t(), h_c)
            if want_b:
                grad_b[: src.v] += g.to(acc).sum(0)
            del g
        ctx.grads = [
            grad_h,
            None if grad_w is None else grad_w.to(ws.dtype),
            None if grad_b is None else grad_b.to(bs.dtype),
            grad_tau,
        ]
        ctx.h_shape = hs.shape
        ctx.n_kept = plan.n_kept
        ctx.mark_non_differentiable(per)
        return per.mean(), per

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_per: Tensor):
        if ctx.grads is None:
            raise RuntimeError("the fused KD loss supports a single backward pass")
        grads, ctx.grads = ctx.grads, None
        scale = grad_scale(grad_loss, ctx.n_kept)
        for g in grads:
            if g is not None and scale is not None:
                g.mul_(scale)
        grad_h, grad_w, grad_b, grad_tau = grads
        if grad_h is not None:
            grad_h = grad_h.view(ctx.h_shape)
        return grad_h, grad_w, grad_b, grad_tau, None

