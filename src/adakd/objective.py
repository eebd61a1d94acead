"""The KD objective: valid tokens -> LATF selection -> IDTS temperatures -> divergence -> x tau^2 -> mean.

    adakd_loss(student_logits, teacher_logits, labels, *, divergence="rkl", ratio=1.0, idts=False,
               c=0.5, tau_base=1.0, metric="hellinger", direction="inverse", **params) -> (loss, stats)

is the stateless core (method.md sections 1-5). `KDObjective` (made by `build_objective`) is the stateful
one the trainer uses: it owns the LATF schedule and the temperature policy across steps.

Shapes: logits [B, L, V], labels [B, L] aligned with the logit positions (-100 = not a response
token). The valid tokens of the whole micro-batch are ranked together by difficulty s_i (computed at
tau = 1, no gradient) and the top k = max(1, floor(r·n_valid)) kept (stable sort: ties keep position
order); the kept tokens are processed in position order. The teacher is a constant (no gradient).

Three implementations, equal in values and gradients (tests pin it):
- "reference": gathers and materialises everything; the oracle, kept obviously right.
- "chunked":   tokens in chunks of `chunk_size`: scoring, the loss and its gradient are computed one
               chunk at a time (an autograd.Function that produces the input gradient during the
               forward), so only O(chunk·V) temporaries exist besides the gradient buffer itself.
- "fused":     `forward_hidden` takes the final hidden states and LM-head weights: pass 1 scores
               chunks without gradient, pass 2 recomputes the kept tokens' logits chunk by chunk and
               accumulates dL/dhidden, dL/dW, dL/db directly; the [N, V] logits never exist.
A chunked/fused loss supports one backward pass (its gradient buffer is handed over, not copied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .adaptive.difficulty import DifficultyMetric
from .adaptive.ratio import RatioSchedule, build_ratio_schedule
from .adaptive.temperature import (
    DIRECTIONS,
    IDTS,
    ConstantTemperature,
    TemperaturePolicy,
    build_temperature,
    standardize_logits,
)
from .losses import Divergence, build_divergence, compute_dtype
from .losses.base import check_range

IGNORE_INDEX = -100
IMPLS = ("reference", "chunked", "fused")
DEFAULT_MAX_VOCAB_PAD = 1024
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


# --------------------------------------------------------------------------------------------------
# vocabulary alignment
# --------------------------------------------------------------------------------------------------
def shared_vocab(v_student: int, v_teacher: int, max_pad: int = DEFAULT_MAX_VOCAB_PAD) -> int:
    """Size of the shared vocabulary part; refuses sizes that differ by more than padding."""
    if abs(v_student - v_teacher) > max_pad:
        raise ValueError(
            f"student vocabulary has {v_student} entries and the teacher's {v_teacher}: they differ by more "
            f"than padding (max_pad={max_pad}). Distillation on logits needs the same tokenizer for teacher "
            "and student."
        )
    return min(v_student, v_teacher)


def align_vocab(
    student_logits: Tensor, teacher_logits: Tensor, *, max_pad: int = DEFAULT_MAX_VOCAB_PAD
) -> Tuple[Tensor, Tensor]:
    """Cut both logits to the shared (smaller) vocabulary, e.g. 151936 vs 152064 -> 151936 (views).

    The caller guarantees the same tokenizer; the extra entries are embedding-matrix padding.
    """
    v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], max_pad)
    return student_logits[..., :v], teacher_logits[..., :v]


# --------------------------------------------------------------------------------------------------
# per-token values: the one definition every implementation uses
# --------------------------------------------------------------------------------------------------
def _scaled(
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
    values = div.per_token(_scaled(s_rows, tau, dtype, standardize), _scaled(t_rows, tau, dtype, standardize))
    return values if tau is None else values * tau.to(dtype).square()


def _values_and_grads(
    div: Divergence,
    s_rows: Tensor,
    t_rows: Tensor,
    tau: Optional[Tensor],
    standardize: bool,
    want_tau_grad: bool,
    owned: Tuple[bool, bool] = (False, False),
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(values [n], d sum(values)/d s_rows [n, V] in the compute dtype, d sum(values)/d tau [n] or None).

    `owned`: whether the student / teacher rows are private copies that may be overwritten.
    """
    dtype = compute_dtype(s_rows, t_rows)
    if div.has_analytic_grad and not standardize and not want_tau_grad:
        values, grad = div.value_and_grad(
            _scaled(s_rows, tau, dtype, False, owned[0]), _scaled(t_rows, tau, dtype, False, owned[1])
        )
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


# --------------------------------------------------------------------------------------------------
# where rows of logits come from: logits tensors, or hidden states x LM-head weights
# --------------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    index: Tensor  # flat token indices [c] (ascending)
    start: int  # position of the chunk in the index list
    span: Optional[Tuple[int, int]]  # (lo, hi) when the indices are one contiguous run


def _chunks(index: Tensor, chunk_size: int) -> List[_Chunk]:
    index_cpu = index.cpu()
    out = []
    for start in range(0, index.numel(), chunk_size):
        stop = min(start + chunk_size, index.numel())
        lo, hi = int(index_cpu[start]), int(index_cpu[stop - 1]) + 1
        span = (lo, hi) if hi - lo == stop - start else None
        out.append(_Chunk(index[start:stop], start, span))
    return out


def _take(x: Tensor, ch: _Chunk) -> Tensor:
    # A contiguous run is a view (no copy); scattered rows are gathered.
    return x[ch.span[0] : ch.span[1]] if ch.span is not None else x.index_select(0, ch.index)


def _flat_view(x: Tensor) -> Optional[Tensor]:
    """[..., V] as a [N, V] view, or None where that needs a copy (e.g. logits[:, :-1])."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return None


class _LogitRows:
    """Rows of student / teacher logits by flat token index, never copying a whole [N, V] tensor."""

    def __init__(self, student: Tensor, teacher: Tensor, vocab: int):
        self.student_in, self.teacher_in = student, teacher.detach()
        self.s, self.t = _flat_view(student), _flat_view(self.teacher_in)
        self.v = vocab
        self.dtype = compute_dtype(student, teacher)
        self.device = student.device

    @staticmethod
    def _rows(x_in: Tensor, x_flat: Optional[Tensor], ch: _Chunk) -> Tensor:
        if x_flat is not None:
            return _take(x_flat, ch)
        return x_in[torch.unravel_index(ch.index, x_in.shape[:-1])]  # gathers only these rows

    def student(self, ch: _Chunk) -> Tensor:
        return self._rows(self.student_in.detach(), None if self.s is None else self.s.detach(), ch)[
            :, : self.v
        ]

    def teacher(self, ch: _Chunk) -> Tensor:
        return self._rows(self.teacher_in, self.t, ch)[:, : self.v]

    def owned(self, ch: _Chunk) -> Tuple[bool, bool]:
        """Whether the student / teacher rows of `ch` are private copies (safe to overwrite)."""
        gathered = ch.span is None
        return gathered or self.s is None, gathered or self.t is None

    def grad_buffer(self, n_rows_written: int) -> Tensor:
        x = self.student_in
        full = n_rows_written == x.numel() // x.shape[-1] and self.v == x.shape[-1]
        # Every element gets written when all rows are kept and the vocabularies match: no zero fill.
        return (torch.empty if full else torch.zeros)(x.shape, dtype=x.dtype, device=x.device)

    @staticmethod
    def write_grad(buffer: Tensor, ch: _Chunk, g: Tensor, vocab: int) -> None:
        target = buffer.view(-1, buffer.shape[-1])[:, :vocab]
        if ch.span is not None:
            target[ch.span[0] : ch.span[1]] = g
        else:
            target.index_copy_(0, ch.index, g.to(buffer.dtype))


class _SparseTeacherRows(_LogitRows):
    """Student logit rows and a top-k teacher (`losses.sparse.TeacherTopK`) by flat token index."""

    def __init__(self, student: Tensor, teacher: Any, dense: bool = False):
        self.student_in, self.s = student, _flat_view(student)
        self.top = teacher.flat()
        self.v = student.shape[-1]
        self.dtype = compute_dtype(student, teacher.logprobs)
        self.device = student.device
        self.dense = dense  # rows as [n, V] log-probabilities: top-k exact, the tail spread evenly

    def teacher(self, ch: _Chunk) -> Any:
        rows = self.top.slice(*ch.span) if ch.span is not None else self.top.index_select(ch.index)
        if self.dense:
            from .losses.sparse import dense_teacher

            return dense_teacher(rows, self.v, self.dtype)
        return rows

    def owned(self, ch: _Chunk) -> Tuple[bool, bool]:
        return ch.span is None or self.s is None, True


class _HiddenRows:
    def __init__(
        self,
        hs: Tensor,
        ws: Tensor,
        bs: Optional[Tensor],
        ht: Tensor,
        wt: Tensor,
        bt: Optional[Tensor],
        vocab: int,
    ):
        self.hs = hs.reshape(-1, hs.shape[-1])
        self.ws, self.bs = ws[:vocab], (None if bs is None else bs[:vocab])
        self.ht = ht.detach().reshape(-1, ht.shape[-1])
        self.wt, self.bt = wt.detach()[:vocab], (None if bt is None else bt.detach()[:vocab])
        self.v = vocab
        self.dtype = compute_dtype(self.hs, self.ws, self.ht, self.wt)
        self.device = self.hs.device

    def owned(self, ch: _Chunk) -> Tuple[bool, bool]:
        return True, True  # logits are computed per chunk

    def student_hidden(self, ch: _Chunk) -> Tensor:
        return _take(self.hs.detach(), ch)

    def student(self, ch: _Chunk) -> Tensor:
        with torch.no_grad():
            return F.linear(
                self.student_hidden(ch), self.ws.detach(), None if self.bs is None else self.bs.detach()
            )

    def teacher(self, ch: _Chunk) -> Tensor:
        with torch.no_grad():
            return F.linear(_take(self.ht, ch), self.wt, self.bt)


# --------------------------------------------------------------------------------------------------
# chunked and fused losses: gradients are produced chunk by chunk during the forward
# --------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    div: Divergence
    src: Any
    chunks: List[_Chunk]
    n_kept: int
    standardize: bool


def _grad_scale(grad_loss: Tensor, n_kept: int) -> Optional[float]:
    scale = float(grad_loss) / n_kept
    return None if scale == 1.0 else scale


class _ChunkedLogitsLoss(torch.autograd.Function):
    """mean_i tau_i^2 D_i over the kept rows of [N, V] logits; grad buffer filled during forward."""

    @staticmethod
    def forward(ctx, student: Tensor, tau: Optional[Tensor], plan: _Plan):
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
                values, g, g_tau = _values_and_grads(
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
        scale = _grad_scale(grad_loss, ctx.n_kept)
        for g in (grad_s, grad_tau):
            if g is not None and scale is not None:
                g.mul_(scale)
        return grad_s, grad_tau, None


class _FusedHiddenLoss(torch.autograd.Function):
    """The same loss from hidden states and LM-head weights; logits exist one chunk at a time."""

    @staticmethod
    def forward(ctx, hs: Tensor, ws: Tensor, bs: Optional[Tensor], tau: Optional[Tensor], plan: _Plan):
        src: _HiddenRows = plan.src
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
            values, g, g_tau = _values_and_grads(
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
        scale = _grad_scale(grad_loss, ctx.n_kept)
        for g in grads:
            if g is not None and scale is not None:
                g.mul_(scale)
        grad_h, grad_w, grad_b, grad_tau = grads
        if grad_h is not None:
            grad_h = grad_h.view(ctx.h_shape)
        return grad_h, grad_w, grad_b, grad_tau, None


# --------------------------------------------------------------------------------------------------
# the shared pipeline: valid tokens -> scores -> selection -> temperatures -> loss -> stats
# --------------------------------------------------------------------------------------------------
def _num_kept(ratio: float, n_valid: int) -> int:
    return max(1, math.floor(ratio * n_valid))


def select_tokens(scores: Tensor, k: int) -> Tensor:
    """Positions of the k highest scores (stable: ties keep position order), in ascending order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def _score_chunked(
    metric: DifficultyMetric, src, idx_valid: Tensor, labels_valid: Tensor, chunk_size: int
) -> Tensor:
    if not metric.uses_logits:
        return metric.constant(idx_valid.numel(), src.device, src.dtype)
    scores = torch.empty(idx_valid.numel(), dtype=src.dtype, device=src.device)
    for ch in _chunks(idx_valid, chunk_size):
        stop = ch.start + ch.index.numel()
        scores[ch.start : stop] = metric.rows(src.student(ch), src.teacher(ch), labels_valid[ch.start : stop])
    return scores


@torch.no_grad()
def _entropies(
    src, idx_kept: Tensor, tau: Optional[Tensor], standardize: bool, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Student entropy of the kept tokens before (tau = 1, raw) and after the temperature transform."""
    before = torch.empty(idx_kept.numel(), dtype=src.dtype, device=src.device)
    after = torch.empty_like(before)

    def ent(x: Tensor) -> Tensor:
        lq = F.log_softmax(x, dim=-1)
        return -(lq.exp() * torch.nan_to_num(lq, neginf=0.0)).sum(-1)

    for ch in _chunks(idx_kept, chunk_size):
        stop = ch.start + ch.index.numel()
        rows = src.student(ch)
        before[ch.start : stop] = ent(rows.to(src.dtype))
        tau_c = None if tau is None else tau[ch.start : stop].detach()
        after[ch.start : stop] = ent(_scaled(rows, tau_c, src.dtype, standardize))
    return before, after


def _zero_loss(*tensors: Optional[Tensor]) -> Tensor:
    """0.0 that is still connected to the inputs (their gradient is zeros, never None or NaN)."""
    total = None
    for x in tensors:
        if x is not None and x.requires_grad:
            part = x.narrow(-1, 0, 0).float().sum()  # an empty view: no copy even of sliced inputs
            total = part if total is None else total + part
    return total if total is not None else torch.zeros((), device=tensors[0].device)


def _as_float(x: Tensor) -> float:
    v = float(x)
    return 0.0 if math.isnan(v) else v


def _kd(
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
) -> Tuple[Tensor, Dict[str, Any]]:
    labels_flat = labels.reshape(-1)
    idx_valid = (labels_flat != IGNORE_INDEX).nonzero().squeeze(1)
    n = idx_valid.numel()
    stats: Dict[str, Any] = {key: 0.0 for key in STAT_KEYS}
    stats["ratio"] = float(ratio)
    if n == 0 or div is None:
        loss = _zero_loss(*student_inputs)
        stats["n_valid"] = float(n)
        if telemetry:
            stats["_tensors"] = {}
        return loss, stats

    k = n if (metric.keeps_all or ratio >= 1.0) else _num_kept(ratio, n)
    need_scores = k < n or policy.uses_difficulty or telemetry
    labels_valid = labels_flat[idx_valid]
    scores = None
    if need_scores:
        if impl == "reference":
            all_rows = _Chunk(idx_valid, 0, None)
            scores = (
                metric.rows(src.student(all_rows), src.teacher(all_rows), labels_valid)
                if metric.uses_logits
                else metric.constant(n, src.device, src.dtype)
            )
        else:
            scores = _score_chunked(metric, src, idx_valid, labels_valid, chunk_size)

    kept_local = select_tokens(scores, k) if k < n else torch.arange(n, device=idx_valid.device)
    idx_kept = idx_valid[kept_local]
    scores_kept = None if scores is None else scores[kept_local]
    tau = policy.temperatures(scores_kept, k, src.device, src.dtype)

    if impl == "reference":
        per = _reference_values(src, idx_kept, tau, div, policy.standardize)
        loss = per.mean()
    else:
        plan = _Plan(div, src, _chunks(idx_kept, chunk_size), k, policy.standardize)
        if fused:
            _, ws, bs = student_inputs
            loss, per = _FusedHiddenLoss.apply(src.hs, ws, bs, tau, plan)
        else:
            loss, per = _ChunkedLogitsLoss.apply(src.student_in, tau, plan)

    # kd_loss stays raw: a NaN loss must be visible; the 0.0 rule is for statistics that are undefined
    stats.update(kd_loss=float(loss.detach()), n_valid=float(n), n_kept=float(k), kept_frac=k / n)
    if tau is None:
        stats.update(tau_mean=1.0, tau_min=1.0, tau_max=1.0)
    else:
        tau_d = tau.detach()
        stats.update(
            tau_mean=_as_float(tau_d.mean()), tau_min=_as_float(tau_d.min()), tau_max=_as_float(tau_d.max())
        )
    if scores is not None:
        kept_mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
        kept_mask[kept_local] = True
        stats["diff_kept_mean"] = _as_float(scores[kept_mask].mean())
        if k < n:
            stats["diff_dropped_mean"] = _as_float(scores[~kept_mask].mean())
    if telemetry:
        before, after = _entropies(src, idx_kept, tau, policy.standardize, chunk_size)
        tau_t = torch.ones(k, dtype=src.dtype, device=src.device) if tau is None else tau.detach().clone()
        stats["_tensors"] = {
            "tau": tau_t.cpu(),
            "difficulty": scores.detach().cpu(),
            "kept": kept_mask.cpu(),
            "kept_index": idx_kept.cpu(),
            "token_loss": per.detach().cpu(),
            "entropy_before": before.cpu(),
            "entropy_after": after.cpu(),
        }
    return loss, stats


def _reference_values(
    src, idx_kept: Tensor, tau: Optional[Tensor], div: Divergence, standardize: bool
) -> Tensor:
    """The straightforward version: gather all kept rows (with autograd), one divergence call."""
    s_rows = src.s_full[idx_kept][:, : src.v]
    t_rows = src.t[idx_kept][:, : src.v]
    return token_values(div, s_rows, t_rows, tau, standardize)


class _ReferenceRows(_LogitRows):
    """Logit rows for the reference path: plain [N, V] reshapes, the student's kept differentiable."""

    def __init__(self, student: Tensor, teacher: Tensor, vocab: int):
        super().__init__(student, teacher, vocab)
        self.s_full = student.reshape(-1, student.shape[-1])
        self.s, self.t = self.s_full.detach(), self.teacher_in.reshape(-1, teacher.shape[-1])


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------
def _check_shapes(student: Tensor, teacher: Tensor, labels: Tensor, what: str = "logits") -> None:
    if student.dim() < 2 or student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} "
            "must agree in all but the last dimension"
        )
    if tuple(labels.shape) != tuple(student.shape[:-1]):
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the {what}' leading dims "
            f"{tuple(student.shape[:-1])} (labels aligned with the logit positions, -100 = ignore)"
        )


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown objective implementation {impl!r}; choose one of: {', '.join(IMPLS)}")
    return impl


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def _check_ratio(ratio: float) -> float:
    check_range("adakd", "ratio", float(ratio), 0.0, 1.0, lo_open=True)
    return float(ratio)


# --------------------------------------------------------------------------------------------------
# the stateless core
# --------------------------------------------------------------------------------------------------
def adakd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    divergence: str = "rkl",
    ratio: float = 1.0,
    idts: bool = False,
    c: float = 0.5,
    tau_base: float = 1.0,
    metric: str = "hellinger",
    direction: str = "inverse",
    impl: str = "chunked",
    chunk_size: int = 1024,
    generator: Optional[torch.Generator] = None,
    nmtkd_k: int = 5,
    telemetry: bool = False,
    max_vocab_pad: int = DEFAULT_MAX_VOCAB_PAD,
    **params: Any,
) -> Tuple[Tensor, Dict[str, Any]]:
    """AdaKD loss of one micro-batch. `**params` go to the divergence (alpha, beta, mu, ...).

    ratio = LATF keep ratio r (1 = every valid token); idts = per-token temperatures (else tau_base for
    all); `impl` "reference" | "chunked" (default, memory-bounded); `generator` is required by
    metric="random". With ratio = 1 and idts = False this is exactly mean_i D(student_i, teacher_i).
    Returns (scalar loss, stats of python floats; with telemetry=True also stats["_tensors"]).
    """
    div = build_divergence(divergence, **params)
    if metric == "random" and generator is None:
        raise ValueError("metric='random' needs an explicit generator=torch.Generator(...) (no global RNG)")
    diff = DifficultyMetric(metric, k=nmtkd_k, generator=generator)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    policy = IDTS(c=c, tau_base=tau_base, direction=direction) if idts else ConstantTemperature(tau_base)
    impl = "chunked" if _check_impl(impl) == "fused" else impl  # logits given: fused == chunked
    _check_shapes(student_logits[..., :1], teacher_logits[..., :1], labels)
    v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], max_vocab_pad)
    src = (_ReferenceRows if impl == "reference" else _LogitRows)(student_logits, teacher_logits, v)
    return _kd(
        src,
        (student_logits,),
        labels,
        div=div,
        metric=diff,
        ratio=_check_ratio(ratio),
        policy=policy,
        impl=impl,
        chunk_size=_check_chunk(chunk_size),
        telemetry=telemetry,
        fused=False,
    )


# --------------------------------------------------------------------------------------------------
# the stateful objective the trainer uses
# --------------------------------------------------------------------------------------------------
class KDObjective:
    """KD term of the training loss, with the LATF schedule and the temperature policy as state.

    loss, stats = obj(student_logits, teacher_logits, labels, telemetry=False)
    loss, stats = obj.forward_hidden(student_hidden, student_head_weight, teacher_hidden,
                                     teacher_head_weight, labels, ...)
    obj.step_end(kd_loss)      # once per optimizer step
    obj.ratio, obj.parameters(), obj.state_dict(), obj.load_state_dict(sd)
    """

    def __init__(
        self,
        divergence: Optional[Divergence],
        *,
        metric: DifficultyMetric,
        schedule: RatioSchedule,
        temperature: TemperaturePolicy,
        impl: str = "chunked",
        chunk_size: int = 1024,
        generator: Optional[torch.Generator] = None,
        telemetry_every: int = 50,
        max_vocab_pad: int = DEFAULT_MAX_VOCAB_PAD,
    ):
        self.divergence = divergence
        self.metric = metric
        self.schedule = schedule
        self.temperature = temperature
        self.impl = _check_impl(impl)
        self.chunk_size = _check_chunk(chunk_size)
        self.generator = generator
        self.telemetry_every = int(telemetry_every)
        self.max_vocab_pad = int(max_vocab_pad)

    def __repr__(self) -> str:
        return (
            f"KDObjective({self.divergence!r}, metric={self.metric.name}, schedule={self.schedule.kind}, "
            f"temperature={self.temperature.name}, impl={self.impl}, chunk_size={self.chunk_size})"
        )

    @property
    def ratio(self) -> float:
        return self.schedule.ratio

    def _options(self, telemetry: bool) -> Dict[str, Any]:
        return dict(
            div=self.divergence,
            metric=self.metric,
            ratio=self.ratio,
            policy=self.temperature,
            chunk_size=self.chunk_size,
            telemetry=telemetry,
        )

    def __call__(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, telemetry: bool = False
    ) -> Tuple[Tensor, Dict[str, Any]]:
        _check_shapes(student_logits[..., :1], teacher_logits[..., :1], labels)
        v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], self.max_vocab_pad)
        impl = "reference" if self.impl == "reference" else "chunked"
        src = (_ReferenceRows if impl == "reference" else _LogitRows)(student_logits, teacher_logits, v)
        return _kd(src, (student_logits,), labels, impl=impl, fused=False, **self._options(telemetry))

    def forward_sparse(
        self,
        student_logits: Tensor,
        teacher: Any,
        labels: Tensor,
        telemetry: bool = False,
        tail: str = "student",
        form: str = "dense",
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """The same loss against a top-k teacher (`losses.sparse.TeacherTopK`, e.g. from the teacher cache).

        form "dense": the teacher row is rebuilt over the whole vocabulary (top-k exact, the tail mass spread
        evenly over the other tokens) and the usual divergence / difficulty code runs on it; "buckets": both
        distributions are reduced to k + 1 buckets (top-k and tail; `tail` is then the teacher-tail
        approximation under tau != 1). adakd.losses.sparse. Always the chunked path."""
        from .losses.sparse import FORMS, BucketDivergence, BucketMetric

        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")

        if tuple(teacher.shape) != tuple(student_logits.shape[:-1]) or tuple(labels.shape) != tuple(
            student_logits.shape[:-1]
        ):
            raise ValueError(
                f"student logits {tuple(student_logits.shape)}, top-k teacher rows {tuple(teacher.shape)} and "
                f"labels {tuple(labels.shape)} must agree in all but the logits' last dimension"
            )
        if self.temperature.standardize:
            raise ValueError(
                "adakd.temperature=logit_std standardises the teacher's full logits, which a top-k teacher "
                "cache does not have; use the live teacher (train.teacher_cache.enabled=false)"
            )
        if teacher.ids.numel() and int(teacher.ids.max()) >= student_logits.shape[-1]:
            raise ValueError(
                f"top-k teacher ids reach {int(teacher.ids.max())}, beyond the student's "
                f"{student_logits.shape[-1]} logits (the cache was built for another vocabulary)"
            )
        src = _SparseTeacherRows(student_logits, teacher, dense=form == "dense")
        options = self._options(telemetry)
        if form == "buckets":
            options["div"] = None if self.divergence is None else BucketDivergence(self.divergence, tail=tail)
            options["metric"] = BucketMetric(self.metric)
        return _kd(src, (student_logits,), labels, impl="chunked", fused=False, **options)

    def forward_hidden(
        self,
        student_hidden: Tensor,
        student_head_weight: Tensor,
        teacher_hidden: Tensor,
        teacher_head_weight: Tensor,
        labels: Tensor,
        telemetry: bool = False,
        student_head_bias: Optional[Tensor] = None,
        teacher_head_bias: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """The same loss from final hidden states [B, L, H] and LM-head weights [V, H] (+ biases [V]).

        impl "reference" materialises the logits (the oracle); otherwise the fused two-pass path.
        """
        _check_shapes(student_hidden[..., :1], teacher_hidden[..., :1], labels, what="hidden states")
        if (
            student_head_weight.dim() != 2
            or student_head_weight.shape[1] != student_hidden.shape[-1]
            or teacher_head_weight.dim() != 2
            or teacher_head_weight.shape[1] != teacher_hidden.shape[-1]
        ):
            raise ValueError("head weights must be [V, H] with H the hidden size of their model")
        v = shared_vocab(student_head_weight.shape[0], teacher_head_weight.shape[0], self.max_vocab_pad)
        if self.impl == "reference":
            bs = None if student_head_bias is None else student_head_bias[:v]
            bt = None if teacher_head_bias is None else teacher_head_bias[:v]
            s_logits = F.linear(student_hidden, student_head_weight[:v], bs)
            with torch.no_grad():
                t_logits = F.linear(teacher_hidden, teacher_head_weight[:v], bt)
            return self(s_logits, t_logits, labels, telemetry)
        src = _HiddenRows(
            student_hidden,
            student_head_weight,
            student_head_bias,
            teacher_hidden,
            teacher_head_weight,
            teacher_head_bias,
            v,
        )
        return _kd(
            src,
            (student_hidden, student_head_weight, student_head_bias),
            labels,
            impl="fused",
            fused=True,
            **self._options(telemetry),
        )

    def step_end(self, kd_loss: float) -> float:
        """Once per optimizer step, with that step's KD loss: advances LATF / the schedule and CTKD."""
        self.temperature.step_end()
        return self.schedule.step_end(kd_loss)

    def parameters(self) -> List[torch.nn.Parameter]:
        return self.temperature.parameters()

    def to(self, device: torch.device | str) -> "KDObjective":
        self.temperature.to(device)
        return self

    def state_dict(self) -> Dict[str, Any]:
        sd: Dict[str, Any] = {
            "ratio_schedule": self.schedule.state_dict(),
            "temperature": self.temperature.state_dict(),
        }
        if self.generator is not None:
            sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["ratio_schedule"])
        self.temperature.load_state_dict(state["temperature"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if hasattr(cfg, "get") and not hasattr(cfg, "__dataclass_fields__"):  # dict or DictConfig
        value = cfg.get(key, default)
        return default if value is None and default is not None else value
    return getattr(cfg, key, default)


def _plain_dict(params: Any) -> Dict[str, Any]:
    if params is None:
        return {}
    return {str(k): v for k, v in params.items()}


def build_objective(
    method_cfg: Any,
    adakd_cfg: Any,
    *,
    total_steps: int,
    impl: str = "chunked",
    chunk_size: int = 1024,
    seed: int = 0,
) -> KDObjective:
    """The trainer's objective from the `method` and `adakd` config groups (dataclasses or DictConfigs).

    adakd.latf false -> r = 1 always; adakd.idts false -> the adakd.temperature strategy.
    method.divergence "none" (pure SFT) gives an objective whose KD term is a connected zero.
    """
    from .schema.objective import AdakdConfig, MethodConfig

    m_def, a_def = MethodConfig(), AdakdConfig()

    def a(key: str) -> Any:
        return _get(adakd_cfg, key, getattr(a_def, key))

    name = _get(method_cfg, "divergence", m_def.divergence)
    div = (
        None
        if name in (None, "none")
        else build_divergence(name, **_plain_dict(_get(method_cfg, "params", {})))
    )
    latf, idts = bool(a("latf")), bool(a("idts"))
    metric_name = a("metric")
    generator = torch.Generator().manual_seed(int(seed))
    metric = DifficultyMetric(metric_name, k=int(a("nmtkd_k")), generator=generator)
    schedule = build_ratio_schedule(
        a("ratio_schedule"),
        total_steps,
        enabled=latf,
        ratio_start=a("ratio_start"),
        ratio_end=a("ratio_end"),
        ema_beta=a("ema_beta"),
        warmup_frac=a("warmup_frac"),
        epsilon=a("epsilon"),
        delta=a("delta"),
        ratio_min=a("ratio_min"),
    )
    temperature = build_temperature(
        idts=idts,
        temperature=a("temperature"),
        c=a("c"),
        tau_base=a("tau_base"),
        direction=a("direction"),
        total_steps=total_steps,
        ctkd_lambda_start=a("ctkd_lambda_start"),
        ctkd_lambda_end=a("ctkd_lambda_end"),
        ctkd_ramp_frac=a("ctkd_ramp_frac"),
        ctkd_tau_min=a("ctkd_tau_min"),
    )
    if not idts and a("direction") not in DIRECTIONS:
        raise ValueError(f"adakd.direction must be one of {DIRECTIONS}, got {a('direction')!r}")
    return KDObjective(
        div,
        metric=metric,
        schedule=schedule,
        temperature=temperature,
        impl=impl,
        chunk_size=chunk_size,
        generator=generator,
        telemetry_every=int(a("telemetry_every")),
    )


__all__ = [
    "adakd_loss",
    "align_vocab",
    "shared_vocab",
    "build_objective",
    "KDObjective",
    "token_values",
    "select_tokens",
    "IGNORE_INDEX",
    "IMPLS",
    "STAT_KEYS",
]
