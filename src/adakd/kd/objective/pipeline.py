"""The AdaKD pipeline shared by every implementation and input form:

    valid tokens -> difficulty scores (tau = 1, no gradient) -> LATF selection of the top k
    -> IDTS (or another policy's) temperatures -> per-token divergence x tau^2 -> mean -> stats

The valid tokens of the whole micro-batch are ranked together (flattened across sequences) and the top
k = max(1, floor(r * n_valid)) are kept (stable sort: ties keep position order); kept tokens are
processed in position order (docs/method.md sections 2-5).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...data.prompts import IGNORE_INDEX
from ..adaptive.difficulty import DifficultyMetric
from ..adaptive.temperature import TemperaturePolicy
from ..losses import Divergence
from .chunked import ChunkedLogitsLoss, Plan
from .fused import FusedHiddenLoss, score_hidden
from .chunks import Chunk, split_chunks
from .token_values import scaled, token_values, values_and_grads

STAT_KEYS = (
    "kd_loss",
    "ratio",
    "kept_frac",
    "n_valid",
    "n_kept",
    "tau_mean",
    "tau_min",
    "tau_max",
    "diff_kept_mean",
    "diff_dropped_mean",
)


def num_kept(ratio: float, n_valid: int) -> int:
    return max(1, math.floor(ratio * n_valid))


def select_tokens(scores: Tensor, k: int) -> Tensor:
    """Positions of the k highest scores (stable: ties keep position order), in ascending order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def score_chunked(
    metric: DifficultyMetric, src, idx_valid: Tensor, labels_valid: Tensor, chunk_size: int
) -> Tensor:
    if not metric.uses_logits:
        return metric.constant(idx_valid.numel(), src.device, src.dtype)
    scores = torch.empty(idx_valid.numel(), dtype=src.dtype, device=src.device)
    for ch in split_chunks(idx_valid, chunk_size):
        stop = ch.start + ch.index.numel()
        scores[ch.start : stop] = metric.rows(src.student(ch), src.teacher(ch), labels_valid[ch.start : stop])
    return scores


def _entropy(x: Tensor) -> Tensor:
    lq = F.log_softmax(x, dim=-1)
    return -(lq.exp() * torch.nan_to_num(lq, neginf=0.0)).sum(-1)


def zero_loss(*tensors: Optional[Tensor]) -> Tensor:
    """0.0 that is still connected to the inputs (their gradient is zeros, never None or NaN)."""
    total = None
    for x in tensors:
        if x is not None and x.requires_grad:
            part = x.narrow(-1, 0, 0).float().sum()  # an empty view: no copy even of sliced inputs
            total = part if total is None else total + part
    return total if total is not None else torch.zeros((), device=tensors[0].device)


def as_float(x: Tensor) -> float:
    v = float(x)
    return 0.0 if math.isnan(v) else v


def run_pipeline(
    src,
    student_inputs: Tuple[Optional[Tensor], ...],
    labels: Tensor,
    *,
    div: Optional[Divergence],
    metric: DifficultyMetric,
    ratio: float,
    policy: TemperaturePolicy,
    impl: str,
    chunk_size: int,
    telemetry: bool,
    fused: bool,
    hold_tau: Optional[Tuple[int, float]] = None,
    tau_half: str = "both",
) -> Tuple[Tensor, Dict[str, Any]]:
    """Two diagnostics of the temperatures (docs/reproducing.md): hold_tau (token id, tau): every kept token whose
    target is that id gets that temperature instead of the policy's (e.g. the end-of-answer token at tau = 1);
    tau_half "warm" / "cool": only the policy's temperatures above / below 1 are used, the others are 1."""
    labels_flat = labels.reshape(-1)
    idx_valid = (labels_flat != IGNORE_INDEX).nonzero().squeeze(1)
    n = idx_valid.numel()
    stats: Dict[str, Any] = {key: 0.0 for key in STAT_KEYS}
    stats["ratio"] = float(ratio)
    if n == 0 or div is None:
        loss = zero_loss(*student_inputs)
        stats["n_valid"] = float(n)
        if telemetry:
            stats["_tensors"] = {}
        return loss, stats

    k = n if (metric.keeps_all or ratio >= 1.0) else num_kept(ratio, n)
    need_scores = k < n or policy.uses_difficulty or telemetry
    labels_valid = labels_flat[idx_valid]
    scores = None
    if need_scores:
        if impl == "reference":
            all_rows = Chunk(idx_valid, 0, None)
            scores = (
                metric.rows(src.student(all_rows), src.teacher(all_rows), labels_valid)
                if metric.uses_logits
                else metric.constant(n, src.device, src.dtype)
            )
        elif fused and metric.uses_logits:
            scores = score_hidden(metric, src, idx_valid, labels_valid, k, chunk_size)
        else:
            scores = score_chunked(metric, src, idx_valid, labels_valid, chunk_size)

    kept_local = select_tokens(scores, k) if k < n else torch.arange(n, device=idx_valid.device)
    idx_kept = idx_valid[kept_local]
    scores_kept = None if scores is None else scores[kept_local]
    tau = policy.temperatures(scores_kept, k, src.device, src.dtype)
    if tau is not None and tau_half != "both":
        tau = tau.clamp(min=1.0) if tau_half == "warm" else tau.clamp(max=1.0)
    if hold_tau is not None:
        tau = held(tau, labels_valid[kept_local], *hold_tau)

    if impl == "reference":
        per = reference_values(src, idx_kept, tau, div, policy.standardize)
        loss = per.mean()
    else:
        plan = Plan(div, src, split_chunks(idx_kept, chunk_size), k, policy.standardize, idx_kept, chunk_size)
        if fused:
            _, ws, bs = student_inputs
            loss, per = FusedHiddenLoss.apply(src.hs, ws, bs, tau, plan)
        else:
            loss, per = ChunkedLogitsLoss.apply(src.student_in, tau, plan)

    # kd_loss stays raw: a NaN loss must be visible; the 0.0 rule is for statistics that are undefined
    stats.update(kd_loss=float(loss.detach()), n_valid=float(n), n_kept=float(k), kept_frac=k / n)
    if tau is None:
        stats.update(tau_mean=1.0, tau_min=1.0, tau_max=1.0)
    else:
        tau_d = tau.detach()
        stats.update(
            tau_mean=as_float(tau_d.mean()), tau_min=as_float(tau_d.min()), tau_max=as_float(tau_d.max())
        )
    if scores is not None:
        kept_mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
        kept_mask[kept_local] = True
        stats["diff_kept_mean"] = as_float(scores[kept_mask].mean())
        if k < n:
            stats["diff_dropped_mean"] = as_float(scores[~kept_mask].mean())
    if telemetry:
        rows = kept_row_telemetry(src, idx_kept, tau, div, policy.standardize, chunk_size)
        tau_t = torch.ones(k, dtype=src.dtype, device=src.device) if tau is None else tau.detach().clone()
        stats["_tensors"] = {
            "tau": tau_t.cpu(),
            "difficulty": scores.detach().cpu(),
            "kept": kept_mask.cpu(),
            "kept_index": idx_kept.cpu(),
            "token_loss": per.detach().cpu(),
            "entropy_before": rows["entropy_before"].cpu(),
            "entropy_after": rows["entropy_after"].cpu(),
            "grad_norm": rows["grad_norm"],
            "grad_norm_t1": rows["grad_norm_t1"],
        }
    return loss, stats


def held(tau: Optional[Tensor], targets_kept: Tensor, token_id: int, value: float) -> Optional[Tensor]:
    """The policy's temperatures with those of the kept tokens whose target is `token_id` replaced by `value`."""
    at = targets_kept == int(token_id)
    if tau is None:
        if value == 1.0 or not bool(at.any()):
            return None   # no scaling at all stays the bit-exact plain loss
        tau = torch.ones(targets_kept.numel(), device=targets_kept.device)
    return torch.where(at.to(tau.device), torch.full_like(tau, float(value)), tau)


@torch.no_grad()
def kept_row_telemetry(src, idx_kept: Tensor, tau: Optional[Tensor], div: Divergence, standardize: bool,
                       chunk_size: int) -> Dict[str, Tensor]:
    """Telemetry of the kept tokens, from one pass over their logit rows (each chunk's rows computed once):
    - entropy_before / entropy_after: the student's entropy at tau = 1 (raw) and after the temperature transform;
    - grad_norm / grad_norm_t1: the norm of d(tau^2 D)/d(student logits) at the temperature the token was given
      and at tau = 1: how much each token pushes the student, and how much of that its temperature changed. The
      loss is the mean of these terms, so each token's share of the step is its norm / k."""
    k = idx_kept.numel()
    before = torch.empty(k, dtype=src.dtype, device=src.device)
    after = torch.empty_like(before)
    at_tau = torch.empty(k, dtype=torch.float32)
    at_one = torch.empty_like(at_tau)
    for ch in split_chunks(idx_kept, chunk_size):
        stop = ch.start + ch.index.numel()
        s_rows, t_rows = src.student(ch), src.teacher(ch)   # detached rows, by the sources' contract
        tau_c = None if tau is None else tau[ch.start : stop].detach()
        before[ch.start : stop] = _entropy(s_rows.to(src.dtype))
        after[ch.start : stop] = _entropy(scaled(s_rows, tau_c, src.dtype, standardize))
        for out, t in ((at_tau, tau_c), (at_one, None)):
            _, grad, _ = values_and_grads(div, s_rows, t_rows, t, standardize, False)
            out[ch.start : stop] = grad.float().norm(dim=-1).cpu()
    return {"entropy_before": before, "entropy_after": after, "grad_norm": at_tau, "grad_norm_t1": at_one}


def reference_values(
    src, idx_kept: Tensor, tau: Optional[Tensor], div: Divergence, standardize: bool
) -> Tensor:
    """The straightforward version: gather all kept rows (with autograd), one divergence call."""
    s_rows = src.s_full[idx_kept][:, : src.v]
    t_rows = src.t[idx_kept][:, : src.v]
    return token_values(div, s_rows, t_rows, tau, standardize)

