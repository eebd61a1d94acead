"""The fused path: the KD loss from final hidden states and LM-head weights, logits one chunk at a time.

    pass 1 (`score_hidden`, AdaKD only): every valid token's logits, its difficulty score; the hardest tokens'
            logits kept in the `LogitCache` within its budget (logit_cache.auto_budget_bytes by default)
    pass 2 (`FusedHiddenLoss`): the kept tokens' value and gradient rows, folded into dL/dhidden, dL/dW,
            dL/db at once; (A) the tokens the cache holds, from the cache, (B) the others, recomputed

Memory. One `Workspace` per loss call holds the chunk's student and teacher rows and two small blocks of
scratch; the elementwise work (scores, divergence, gradient) runs on blocks of `SCRATCH_ROWS` rows, and the
gradient rows take the student rows' place. So besides dL/dW, dL/dhidden and the cache, the loss holds two
chunks of logits and a little scratch, and the same buffers serve every chunk: with a heap allocator that
keeps freed memory (glibc without mmap, as the benchmarks run), freeing [chunk, V] blocks and asking for
them again between small allocations fragments the heap and grows the peak by whole blocks.
With a cache in the compute dtype, dL/dW is allocated only after phase A freed the cached teacher rows, so
the weight gradient and the whole cache never exist at once (logit_cache.auto_budget_bytes counts on it).

Values per token are those of the straightforward path (the same ops on the same rows); only the order in
which dL/dW sums the tokens differs (float rounding). tests/test_fused_cache.py pins both.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..adaptive.difficulty import DifficultyMetric
from .chunked import Plan, grad_scale
from .chunks import Chunk, split_chunks
from .logit_cache import LogitCache
from .rows import HiddenRows
from .token_values import token_values, values_and_grads

# Rows of elementwise work at a time: two [32, V] scratch buffers (6 MiB each at V = 50,257 in float32)
# instead of [chunk, V] ones; the row-wise kernels give every row the same value whatever the block.
SCRATCH_ROWS = 32


class Workspace:
    """The fused loss's per-chunk buffers, allocated once per call and reused by every chunk: the student
    and teacher rows of a chunk ([chunk, V], as the LM heads return them) and two row blocks of scratch in
    the compute dtype."""

    def __init__(self, src: HiddenRows, rows: int):
        v, dev = src.v, src.device
        self.dtype = src.dtype
        self.s = torch.empty(rows, v, dtype=src.hs.dtype, device=dev)
        self.t = torch.empty(rows, v, dtype=src.ht.dtype, device=dev)
        sub = min(rows, SCRATCH_ROWS)
        self.scratch = tuple(torch.empty(sub, v, dtype=src.dtype, device=dev) for _ in range(2))

    @staticmethod
    def of(src: HiddenRows, chunk: int) -> "Workspace":
        """The workspace of this loss call (src.work), made on first use."""
        if src.work is None:
            src.work = Workspace(src, min(chunk, src.hs.shape[0]))
        return src.work

    def _blocks(self, n: int):
        sub = self.scratch[0].shape[0]
        return (slice(lo, min(lo + sub, n)) for lo in range(0, n, sub))

    @torch.no_grad()
    def score(self, metric: DifficultyMetric, s: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """Difficulty of rows `s`, `t` (left intact)."""
        out = torch.empty(s.shape[0], dtype=self.dtype, device=s.device)
        for b in self._blocks(s.shape[0]):
            out[b] = metric.rows(s[b], t[b], labels[b], scratch=self.scratch)
        return out

    def values(self, plan: Plan, s: Tensor, t: Tensor, tau: Optional[Tensor]) -> Tensor:
        out = torch.empty(s.shape[0], dtype=self.dtype, device=s.device)
        for b in self._blocks(s.shape[0]):
            out[b] = token_values(plan.div, s[b], t[b], None if tau is None else tau[b], plan.standardize)
        return out

    def values_and_grads(
        self, plan: Plan, s: Tensor, t: Tensor, tau: Optional[Tensor], want_tau: bool
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Values, gradient rows and tau gradients of rows `s`, `t`, which are private (the workspace's or the
        cache's) and are overwritten: the gradient is returned in `s` where it has the compute dtype."""
        n = s.shape[0]
        values = torch.empty(n, dtype=self.dtype, device=s.device)
        g_tau = torch.empty(n, dtype=self.dtype, device=s.device) if want_tau else None
        grad = s if s.dtype == self.dtype else torch.empty(n, s.shape[1], dtype=self.dtype, device=s.device)
        for b in self._blocks(n):
            v_b, g_b, gt_b = values_and_grads(
                plan.div, s[b], t[b], None if tau is None else tau[b], plan.standardize, want_tau, (True, True),
                self.scratch,
            )
            values[b] = v_b
            if want_tau:
                g_tau[b] = gt_b
            if g_b.data_ptr() != grad[b].data_ptr():  # the closed forms leave it in place already
                grad[b].copy_(g_b)
            del g_b
        return values, grad, g_tau


@torch.no_grad()
def score_hidden(
    metric: DifficultyMetric, src: HiddenRows, idx_valid: Tensor, labels_valid: Tensor, n_kept: int, chunk: int
) -> Tensor:
    """Pass 1 of the fused path: the difficulty of every valid token; fills the logit cache (src.cache)."""
    cache = src.start_cache(n_kept, chunk)  # the largest blocks first: each call finds them where the last one freed them
    work = Workspace.of(src, chunk)
    n = idx_valid.numel()
    scores = torch.empty(n, dtype=src.dtype, device=src.device)
    done = 0
    if cache is not None:
        # The first tokens' logits go straight into the cache's slots, as one block: no copy, no workspace,
        # and one large matmul (which streams each LM head once for all of them).
        done = min(cache.slots, n)
        (ch,) = split_chunks(idx_valid[:done], done)
        s, t = (src.student(ch, out=cache.rows_by_side[0]), src.teacher(ch, out=cache.rows_by_side[1]))
        scores[:done] = work.score(metric, s, t, labels_valid[:done])
        cache.fill(ch.index, scores[:done])
        del s, t
    for ch in split_chunks(idx_valid[done:], chunk):
        lo, hi = done + ch.start, done + ch.start + ch.index.numel()
        s, t = src.student(ch, out=work.s), src.teacher(ch, out=work.t)
        scores[lo:hi] = work.score(metric, s, t, labels_valid[lo:hi])
        if cache is not None:
            cache.offer(ch.index, (s, t), scores[lo:hi])
        del s, t
    return scores


class StudentGrads:
    """dL/dhidden, dL/dW, dL/db (and dL/dtau) of the fused loss, summed over rows of gradients w.r.t. the
    student logits (unscaled). `lazy_w`: dL/dW is allocated at the first rows added (phase A adds its rows
    after the cached teacher rows are freed)."""

    def __init__(self, src: HiddenRows, ws: Tensor, bs: Optional[Tensor], n_kept: int, want: Tuple[bool, ...],
                 lazy_w: bool):
        want_h, self.want_w, want_b, want_tau = want
        self.src, self.ws_shape, self.ws_dtype = src, ws.shape, ws.dtype
        self.ws_v = src.ws.detach()
        # Accumulate weight gradients in float32 at least (one rounding at the end, like one big matmul).
        self.acc = torch.promote_types(ws.dtype, torch.float32)
        self.h = torch.zeros_like(src.hs) if want_h else None
        self.w: Optional[Tensor] = None
        if self.want_w and not lazy_w:
            self._alloc_w()
        self.b = torch.zeros(bs.shape, dtype=self.acc, device=bs.device) if want_b else None
        self.tau = torch.zeros(n_kept, dtype=src.dtype, device=src.device) if want_tau else None

    def _alloc_w(self) -> None:
        self.w = torch.zeros(self.ws_shape, dtype=self.acc, device=self.ws_v.device)

    @property
    def wants_rows(self) -> bool:
        return self.h is not None or self.want_w or self.b is not None

    def add(self, ch: Chunk, g: Tensor) -> None:
        """Rows `g` [c, V] = dL/d(student logits) of tokens `ch`."""
        src = self.src
        if self.h is not None:
            gh = g.to(self.ws_v.dtype) @ self.ws_v
            if ch.span is not None:
                self.h[ch.span[0] : ch.span[1]] = gh
            else:
                self.h.index_copy_(0, ch.index, gh.to(self.h.dtype))
            del gh
        if self.want_w:
            if self.w is None:
                self._alloc_w()
            self.w[: src.v].addmm_(g.to(self.acc).t(), src.student_hidden(ch).to(self.acc))
        if self.b is not None:
            self.b[: src.v] += g.to(self.acc).sum(0)

    def result(self, bs: Optional[Tensor]) -> List[Optional[Tensor]]:
        if self.want_w and self.w is None:  # no row was added (k >= 1 always adds one; kept for safety)
            self._alloc_w()
        return [
            self.h,
            None if self.w is None else self.w.to(self.ws_dtype),
            None if self.b is None else self.b.to(bs.dtype),
            self.tau,
        ]


class FusedHiddenLoss(torch.autograd.Function):
    """mean_i tau_i^2 D_i over the kept tokens, from hidden states and LM-head weights (pass 2 above)."""

    @staticmethod
    def forward(ctx, hs: Tensor, ws: Tensor, bs: Optional[Tensor], tau: Optional[Tensor], plan: Plan):
        src: HiddenRows = plan.src
        want = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bs is not None and ctx.needs_input_grad[2],
            tau is not None and ctx.needs_input_grad[3],
        )
        # The cache leaves the source here: pass 2 consumes its rows, and whatever reads rows later
        # (telemetry) recomputes them.
        cache, src.cache = src.cache, None
        defer_w = cache is not None and cache.rows_by_side[0].dtype == src.dtype
        # The gradients before the workspace (where pass 1 did not make it): a call that follows finds the
        # blocks the last one freed in the same order and sizes, so the heap does not grow from call to call.
        grads = StudentGrads(src, ws, bs, plan.n_kept, want, lazy_w=defer_w)
        work = Workspace.of(src, plan.chunk_size)
        any_grad = grads.wants_rows or want[3]
        per = torch.empty(plan.n_kept, dtype=src.dtype, device=src.device)

        def run(where, s: Tensor, t: Tensor) -> Optional[Tensor]:
            """Values of the tokens at kept positions `where` (rows s, t); returns their gradient rows."""
            tau_c = None if tau is None else tau[where]
            if not any_grad:
                per[where] = work.values(plan, s, t, tau_c)
                return None
            values, g, g_tau = work.values_and_grads(plan, s, t, tau_c, want[3])
            per[where] = values
            if want[3]:
                grads.tau[where] = g_tau
            return g if grads.wants_rows else None

        todo = plan.chunks
        if cache is not None:
            todo = _cached_phase(cache, plan, grads, run, defer_w)
        for ch in todo:
            where = slice(ch.start, ch.start + ch.index.numel()) if ch.pos is None else ch.pos
            g = run(where, src.student(ch, out=work.s), src.teacher(ch, out=work.t))
            if g is not None:
                grads.add(ch, g)
            del g
        src.work = None
        ctx.grads = grads.result(bs)
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


def _cached_phase(cache: LogitCache, plan: Plan, grads: StudentGrads, run, defer_w: bool) -> List[Chunk]:
    """Phase A: the kept tokens the cache holds, read from it in place chunk by chunk (each row is used once);
    the cache is freed. Returns the chunks of the kept tokens left for phase B (their positions in `pos`).

    `defer_w` (a cache in the compute dtype): each chunk's gradient rows stay where its student rows were;
    once the teacher rows are freed, dL/dW is allocated and the cached tokens' part of dL/dW and dL/dhidden
    is one product each."""
    n_kept, size, dev = plan.n_kept, plan.chunk_size, plan.kept.device
    kept_pos = torch.full((cache.slot_of.numel(),), -1, dtype=torch.long, device=dev)
    kept_pos[plan.kept] = torch.arange(n_kept, device=dev)
    tokens = cache.token[: cache.used]
    pos = kept_pos[tokens]
    if bool((pos < 0).any()):  # the cache ranks as the selection does, so it holds kept tokens only
        raise RuntimeError("the fused logit cache holds a token the selection dropped")
    s_buf, t_buf = cache.rows_by_side
    for lo in range(0, tokens.numel(), size):
        sl = slice(lo, min(lo + size, tokens.numel()))
        g = run(pos[sl], s_buf[sl], t_buf[sl])
        if g is not None and not defer_w:
            grads.add(Chunk(tokens[sl], lo, None), g)
        del g
    cache.release(1)
    del t_buf
    if defer_w and grads.wants_rows:
        grads.add(Chunk(tokens, 0, None), s_buf[: tokens.numel()])
    del s_buf
    cache.release(0)
    left = torch.ones(n_kept, dtype=torch.bool, device=dev)
    left[pos] = False
    left_pos = left.nonzero().squeeze(1)
    return [
        Chunk(ch.index, ch.start, ch.span, left_pos[ch.start : ch.start + ch.index.numel()])
        for ch in split_chunks(plan.kept[left_pos], size)
    ]
