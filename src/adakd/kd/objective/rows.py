"""Where rows of logits come from, by flat token index, one chunk at a time.

- `LogitRows`: student / teacher logits tensors [..., V] (views where the rows are contiguous);
- `ReferenceRows`: the same for the reference path (plain reshapes, the student kept differentiable);
- `SparseTeacherRows`: student logits and a top-k teacher (`kd.losses.sparse.TeacherTopK`);
- `HiddenRows`: final hidden states x LM-head weights; logits exist only for the chunk asked for.

Every source offers `student(chunk)`, `teacher(chunk)` (detached rows), `owned(chunk)` (whether those
rows are private copies the caller may overwrite), `dtype` (the compute dtype) and `device`.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import compute_dtype
from ..losses.sparse import dense_teacher
from .chunks import Chunk, flat_view, take
from .logit_cache import LogitCache, auto_budget_bytes


class LogitRows:
    """Rows of student / teacher logits by flat token index, never copying a whole [N, V] tensor."""

    def __init__(self, student: Tensor, teacher: Tensor, vocab: int):
        self.student_in, self.teacher_in = student, teacher.detach()
        self.s, self.t = flat_view(student), flat_view(self.teacher_in)
        self.v = vocab
        self.dtype = compute_dtype(student, teacher)
        self.device = student.device

    @staticmethod
    def _rows(x_in: Tensor, x_flat: Optional[Tensor], ch: Chunk) -> Tensor:
        if x_flat is not None:
            return take(x_flat, ch)
        return x_in[torch.unravel_index(ch.index, x_in.shape[:-1])]  # gathers only these rows

    def student(self, ch: Chunk) -> Tensor:
        return self._rows(self.student_in.detach(), None if self.s is None else self.s.detach(), ch)[
            :, : self.v
        ]

    def teacher(self, ch: Chunk) -> Tensor:
        return self._rows(self.teacher_in, self.t, ch)[:, : self.v]

    def owned(self, ch: Chunk) -> Tuple[bool, bool]:
        """Whether the student / teacher rows of `ch` are private copies (safe to overwrite)."""
        gathered = ch.span is None
        return gathered or self.s is None, gathered or self.t is None

    def grad_buffer(self, n_rows_written: int) -> Tensor:
        x = self.student_in
        full = n_rows_written == x.numel() // x.shape[-1] and self.v == x.shape[-1]
        # Every element gets written when all rows are kept and the vocabularies match: no zero fill.
        return (torch.empty if full else torch.zeros)(x.shape, dtype=x.dtype, device=x.device)

    @staticmethod
    def write_grad(buffer: Tensor, ch: Chunk, g: Tensor, vocab: int) -> None:
        target = buffer.view(-1, buffer.shape[-1])[:, :vocab]
        if ch.span is not None:
            target[ch.span[0] : ch.span[1]] = g
        else:
            target.index_copy_(0, ch.index, g.to(buffer.dtype))


class SparseTeacherRows(LogitRows):
    """Student logit rows and a top-k teacher (`losses.sparse.TeacherTopK`) by flat token index."""

    def __init__(self, student: Tensor, teacher: Any, dense: bool = False):
        self.student_in, self.s = student, flat_view(student)
        self.top = teacher.flat()
        self.v = student.shape[-1]
        self.dtype = compute_dtype(student, teacher.logprobs)
        self.device = student.device
        self.dense = dense  # rows as [n, V] log-probabilities: top-k exact, the tail spread evenly

    def teacher(self, ch: Chunk) -> Any:
        rows = self.top.slice(*ch.span) if ch.span is not None else self.top.index_select(ch.index)
        if self.dense:
            return dense_teacher(rows, self.v, self.dtype)
        return rows

    def owned(self, ch: Chunk) -> Tuple[bool, bool]:
        return ch.span is None or self.s is None, True


class HiddenRows:
    def __init__(
        self,
        hs: Tensor,
        ws: Tensor,
        bs: Optional[Tensor],
        ht: Tensor,
        wt: Tensor,
        bt: Optional[Tensor],
        vocab: int,
        cache_bytes: Optional[float] = 0.0,
    ):
        self.hs = hs.reshape(-1, hs.shape[-1])
        self.ws, self.bs = ws[:vocab], (None if bs is None else bs[:vocab])
        self.ht = ht.detach().reshape(-1, ht.shape[-1])
        self.wt, self.bt = wt.detach()[:vocab], (None if bt is None else bt.detach()[:vocab])
        self.v = vocab
        self.dtype = compute_dtype(self.hs, self.ws, self.ht, self.wt)
        self.device = self.hs.device
        self.cache_bytes = cache_bytes  # None: derived from the memory floor (logit_cache.auto_budget_bytes)
        self.cache: Optional[LogitCache] = None
        self.work = None  # fused.Workspace, while a loss call runs

    def owned(self, ch: Chunk) -> Tuple[bool, bool]:
        return True, True  # logits are computed per chunk

    def student_hidden(self, ch: Chunk) -> Tensor:
        return take(self.hs.detach(), ch)

    def student(self, ch: Chunk, out: Optional[Tensor] = None) -> Tensor:
        """Student logits of `ch` (into the first rows of `out` where given)."""
        with torch.no_grad():
            bs = None if self.bs is None else self.bs.detach()
            return _linear(self.student_hidden(ch), self.ws.detach(), bs, out)

    def teacher(self, ch: Chunk, out: Optional[Tensor] = None) -> Tensor:
        with torch.no_grad():
            return _linear(take(self.ht, ch), self.wt, self.bt, out)

    def budget_bytes(self, chunk: int) -> float:
        """The logit cache's budget: as set, or derived from the fused loss's memory floor."""
        if self.cache_bytes is not None:
            return float(self.cache_bytes)
        grad_bytes = torch.promote_types(self.ws.dtype, torch.float32).itemsize
        return float(auto_budget_bytes(
            self.hs.shape[0], self.v, self.hs.shape[1], chunk, grad_bytes=grad_bytes,
            hidden_bytes=self.hs.element_size(), compute_bytes=self.dtype.itemsize,
            with_weight_grad=self.hs.dtype != self.dtype,
        ))

    def start_cache(self, n_kept: int, chunk: int) -> Optional[LogitCache]:
        """Before pass 1: room for the logits of up to n_kept tokens, within the budget (None: no room)."""
        per_token = self.v * (self.hs.element_size() + self.ht.element_size())
        slots = min(n_kept, int(self.budget_bytes(chunk) // per_token))
        if slots > 0:
            dtypes = (self.hs.dtype, self.ht.dtype)  # what F.linear returns: the rows are kept as computed
            self.cache = LogitCache(slots, self.hs.shape[0], self.v, dtypes, self.device)
        return self.cache


def _linear(h: Tensor, w: Tensor, b: Optional[Tensor], out: Optional[Tensor]) -> Tensor:
    """F.linear(h, w, b), written into out[:len(h)] where given (the same matmul kernel: the same values)."""
    if out is None:
        return F.linear(h, w, b)
    out = out[: h.shape[0]]
    if b is None:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(b, h, w.t(), out=out)


class ReferenceRows(LogitRows):
    """Logit rows for the reference path: plain [N, V] reshapes, the student's kept differentiable."""

    def __init__(self, student: Tensor, teacher: Tensor, vocab: int):
        super().__init__(student, teacher, vocab)
        self.s_full = student.reshape(-1, student.shape[-1])
        self.s, self.t = self.s_full.detach(), self.teacher_in.reshape(-1, teacher.shape[-1])

