"""The per-token value every implementation computes: tau_i^2 * D(prep(s_i)/tau_i, prep(t_i)/tau_i).

prep is the identity or logit standardisation; tau is None (no scaling at all, so the plain base loss
stays bit-exact) or one temperature per row (docs/method.md section 4). `values_and_grads` is the same value
with its gradient w.r.t. the student rows, computed without keeping an autograd graph (analytically for
fkl / rkl), which is what lets the chunked and fused losses stream chunk by chunk.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..adaptive.temperature import standardize_logits
from ..losses import Divergence, compute_dtype


def scaled(
    rows: Tensor, tau: Optional[Tensor], dtype: torch.dtype, standardize: bool, owned: bool = False
) -> Tensor:
    """prep(rows)/tau in `dtype`. `owned`: rows is a private copy (gathered rows), divide in place."""
    x = rows.to(dtype)
    if standardize:
        x = standardize_logits(x)
        owned = True
    if tau is None:
        return x
    tau = tau.to(dtype).unsqueeze(-1)
    if (owned or x is not rows) and not x.requires_grad:
        return x.div_(tau)  # our own copy: no second [n, V] buffer
    return x / tau


def token_values(
    div: Divergence, s_rows: Tensor, t_rows: Tensor, tau: Optional[Tensor], standardize: bool = False
) -> Tensor:
    """tau_i^2 · D(prep(s_i)/tau_i, prep(t_i)/tau_i) for each row (differentiable)."""
    if getattr(div, "sparse_teacher", False):  # t_rows: a top-k teacher (losses/sparse.py, teacher cache)
        return div.token_values(s_rows, t_rows, tau, standardize)
    dtype = compute_dtype(s_rows, t_rows)
    values = div.per_token(scaled(s_rows, tau, dtype, standardize), scaled(t_rows, tau, dtype, standardize))
    return values if tau is None else values * tau.to(dtype).square()


def values_and_grads(
    div: Divergence,
    s_rows: Tensor,
    t_rows: Tensor,
    tau: Optional[Tensor],
    standardize: bool,
    want_tau_grad: bool,
    owned: Tuple[bool, bool] = (False, False),
    scratch: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(values [n], d sum(values)/d s_rows [n, V] in the compute dtype, d sum(values)/d tau [n] or None).

    `owned`: whether the student / teacher rows are private copies that may be overwritten.
    `scratch`: two buffers of n rows in the compute dtype for the divergence's temporaries.
    """
    dtype = compute_dtype(s_rows, t_rows)
    if div.has_analytic_grad and not standardize and not want_tau_grad:
        s = scaled(s_rows, tau, dtype, False, owned[0])
        t = scaled(t_rows, tau, dtype, False, owned[1])
        # rows that are private here (owned, or new from the division / the cast) may be overwritten
        values, grad = div.value_and_grad(
            s, t, overwrite=(owned[0] or s is not s_rows, owned[1] or t is not t_rows), scratch=scratch
        )
        del s, t
        if tau is not None:
            tau = tau.to(dtype)
            values = values * tau.square()
            grad = grad.mul_(tau.unsqueeze(-1))  # d/ds tau^2 D(s/tau) = tau · D'(s/tau)
        return values, grad, None
    with torch.enable_grad():
        s = s_rows.detach().requires_grad_(True)
        inputs = [s]
        if want_tau_grad:
            tau = tau.detach().requires_grad_(True)
            inputs.append(tau)
        values = token_values(div, s, t_rows, tau, standardize)
        grads = torch.autograd.grad(values.sum(), inputs)
    return values.detach(), grads[0].to(dtype), (grads[1] if want_tau_grad else None)

