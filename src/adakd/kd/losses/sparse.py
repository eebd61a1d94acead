"""Divergences and difficulty metrics against a sparse teacher: its top-k log-probabilities plus the log
of its remaining ("tail") mass per token (the teacher cache, adakd.training.topk_cache).

Two forms (`train.teacher_cache.form`, `KDObjective.forward_sparse(form=...)`):

"buckets": student and teacher are compared on the same k + 1 buckets,

    teacher: [log p(id_1), ..., log p(id_k), log tail_t]                (renormalised: fp16 storage)
    student: [log q(id_1), ..., log q(id_k), log sum_{v not in top-k} q_v]   (from its full logits)

  and every per-token divergence / difficulty metric is evaluated on those (k + 1)-bucket distributions
  (`Divergence.from_log_probs` is written on normalised log-probabilities for this). For f-divergences the
  bucketed value is a lower bound of the full one (data processing) and equals it when the teacher's tail
  is empty. Gradients reach every student logit: the tail bucket's log-sum-exp spreads them over the
  non-top-k entries. Divergences that weigh the student's mass by the teacher's probability token by token
  deep in the tail (rkl, abkd, akl) lose that information entirely.

"dense" (the default): the teacher row is rebuilt over the whole vocabulary, top-k exact and the tail
  mass spread evenly over the other V - k tokens (`dense_teacher`), and the ordinary dense code runs on it.
  Within the tail the student is then compared with a flat teacher, which keeps the student's own
  concentration inside the tail in the loss; measured against the live teacher it is closer than the
  buckets nearly everywhere, and far closer for rkl / abkd / akl and for the Hellinger difficulty when the
  student puts much mass outside the teacher's top-k (adakd.bench.teacher_cache; docs/recipes.md). Its
  cost is that of the live path (one [chunk, V] teacher row block at a time).

Temperatures (IDTS, fixed T, CTKD). The student side is always exact. Dense form: the rebuilt teacher row
is divided by tau like live logits (a flat tail stays flat). Bucket form: the teacher's top-k entries are
exact up to normalisation (p^(1/tau)); its tail under tau, sum_{v in tail} p_v^(1/tau), is approximated per
`tail`:
  "student" (default): the teacher's tail is assumed to have the student's shape inside the tail,
      p_v = T_t · q_v / T_s, so sum p_v^(1/tau) = T_t^(1/tau) · sum (q_v / T_s)^(1/tau), computed
      exactly from the (detached) student logits;
  "uniform": the tail spread evenly over the V - k tokens (what the dense form assumes);
  "atom":    the tail treated as one token, T_t^(1/tau).
At tau = 1 the three agree and equal log T_t. Logit standardisation needs the full teacher logits and is
refused. In the bucket form `nmtkd` runs on the dense rebuild (it ranks single tokens); `entropy` and `ce`
use the student alone and are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import build_divergence
from .base import Divergence, compute_dtype

TAIL_MODES = ("student", "uniform", "atom")
FORMS = ("dense", "buckets")


@dataclass
class TeacherTopK:
    """Sparse teacher rows: ids [..., k] (int), logprobs [..., k] (float, tau = 1), tail [...] (log mass)."""

    ids: Tensor
    logprobs: Tensor
    tail: Tensor

    def __post_init__(self):
        if self.ids.shape != self.logprobs.shape or self.ids.shape[:-1] != self.tail.shape:
            raise ValueError(
                f"teacher top-k: ids {tuple(self.ids.shape)}, logprobs {tuple(self.logprobs.shape)} and "
                f"tail {tuple(self.tail.shape)} do not fit ([..., k], [..., k], [...])"
            )

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype this teacher asks for (float64 if its values are, else float32)."""
        return compute_dtype(self.logprobs)

    @property
    def shape(self) -> torch.Size:
        return self.tail.shape

    def flat(self) -> TeacherTopK:
        return TeacherTopK(self.ids.reshape(-1, self.k), self.logprobs.reshape(-1, self.k), self.tail.reshape(-1))

    def index_select(self, index: Tensor) -> TeacherTopK:
        return TeacherTopK(self.ids.index_select(0, index), self.logprobs.index_select(0, index),
                           self.tail.index_select(0, index))

    def slice(self, lo: int, hi: int) -> TeacherTopK:
        return TeacherTopK(self.ids[lo:hi], self.logprobs[lo:hi], self.tail[lo:hi])

    def to(self, device: str | torch.device) -> TeacherTopK:
        return TeacherTopK(self.ids.to(device), self.logprobs.to(device), self.tail.to(device))

    def unsqueeze(self, dim: int = 0) -> TeacherTopK:
        return TeacherTopK(self.ids.unsqueeze(dim), self.logprobs.unsqueeze(dim), self.tail.unsqueeze(dim))


def topk_from_logits(teacher_logits: Tensor, k: int) -> TeacherTopK:
    """The sparse form of full teacher logits [..., V] (what the cache stores, before fp16 rounding)."""
    v = teacher_logits.shape[-1]
    if not 1 <= k <= v:
        raise ValueError(f"k must be in [1, {v}], got {k}")
    lp = F.log_softmax(teacher_logits.to(compute_dtype(teacher_logits)), dim=-1)
    top, ids = lp.topk(k, dim=-1)
    return TeacherTopK(ids, top, _tail_lse(lp, ids))


def _low(dtype: torch.dtype) -> float:
    # Stands in for -inf inside log-sum-exp (its backward at all -inf rows would be NaN); exp() of it is 0.
    return torch.finfo(dtype).min / 4


def _tail_lse(x: Tensor, ids: Tensor) -> Tensor:
    """log sum_{v not in ids} exp(x_v) per row (differentiable in x). A row whose tail is empty (or all
    -inf) gives a huge negative number, i.e. probability 0, with a finite gradient."""
    low = _low(x.dtype)
    return x.clamp_min(low).scatter(-1, ids, low).logsumexp(-1)


def student_buckets(student_logits: Tensor, ids: Tensor, tau: Tensor | None = None) -> Tensor:
    """[n, k + 1] student log-probabilities of the teacher's top-k ids and of the rest, at tau."""
    z = student_logits.to(compute_dtype(student_logits))
    if tau is not None:
        z = z / tau.to(z.dtype).unsqueeze(-1)
    lq = F.log_softmax(z, dim=-1)
    return torch.cat([lq.gather(-1, ids), _tail_lse(lq, ids).unsqueeze(-1)], dim=-1)


def teacher_buckets(
    teacher: TeacherTopK,
    tau: Tensor | None = None,
    *,
    student_logits: Tensor | None = None,
    vocab: int | None = None,
    tail: str = "student",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """[n, k + 1] teacher log-probabilities of its top-k and tail buckets at tau (renormalised)."""
    dtype = dtype or teacher.dtype
    top = teacher.logprobs.to(dtype)
    t_tail = teacher.tail.to(dtype)
    if tau is None:
        return F.log_softmax(torch.cat([top, t_tail.unsqueeze(-1)], dim=-1), dim=-1)
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    inv = 1.0 / tau.to(dtype)
    if tail == "atom":
        t_tail_tau = t_tail * inv
    elif tail == "uniform":
        if vocab is None:
            raise ValueError("tail='uniform' needs the vocabulary size")
        n_tail = max(vocab - teacher.k, 1)
        t_tail_tau = t_tail * inv + math.log(n_tail) * (1.0 - inv)
    else:
        if student_logits is None:
            raise ValueError("tail='student' needs the student logits")
        # log sum_tail (q_v / T_s)^(1/tau) = LSE_tail(z / tau) - LSE_tail(z) / tau (the normalisers cancel);
        # the student is a constant here, tau keeps its gradient (CTKD).
        z = student_logits.detach().to(dtype)
        s_tail = _tail_lse(z, teacher.ids)
        shape = _tail_lse(z / tau.to(dtype).unsqueeze(-1), teacher.ids) - s_tail * inv
        empty = s_tail <= _low(dtype) / 2   # no student mass outside the top-k: nothing to shape by
        t_tail_tau = torch.where(empty, t_tail * inv, t_tail * inv + shape)
    t_tail_tau = torch.where(torch.isneginf(t_tail), t_tail, t_tail_tau)
    return F.log_softmax(torch.cat([top * inv.unsqueeze(-1), t_tail_tau.unsqueeze(-1)], dim=-1), dim=-1)


class BucketDivergence:
    """A base divergence evaluated on (k + 1)-bucket distributions against a `TeacherTopK`.

    The objective calls `token_values(student_rows [n, V], teacher TeacherTopK [n], tau, standardize)`
    (the hook in `adakd.objective.token_values`), which returns tau^2 · D(buckets) per row, like the
    dense path.
    """

    sparse_teacher = True
    has_analytic_grad = False

    def __init__(self, base: Divergence, tail: str = "student"):
        if tail not in TAIL_MODES:
            raise ValueError(f"teacher cache tail mode must be one of {TAIL_MODES}, got {tail!r}")
        self.base, self.tail = base, tail
        self.name = base.name

    def __repr__(self) -> str:
        return f"BucketDivergence({self.base!r}, tail={self.tail})"

    def buckets(self, student_rows: Tensor, teacher: TeacherTopK, tau: Tensor | None = None):
        dtype = compute_dtype(student_rows, teacher.logprobs)
        lq = student_buckets(student_rows.to(dtype), teacher.ids, tau)
        lp = teacher_buckets(teacher, tau, student_logits=student_rows, vocab=student_rows.shape[-1],
                             tail=self.tail, dtype=dtype)
        return lq, lp

    def token_values(self, student_rows: Tensor, teacher: TeacherTopK, tau: Tensor | None,
                     standardize: bool = False) -> Tensor:
        if standardize:
            raise ValueError("logit standardisation (adakd.temperature=logit_std) needs the teacher's full "
                             "logits; a top-k teacher cache cannot provide them (train.teacher_cache.enabled=false)")
        lq, lp = self.buckets(student_rows, teacher, tau)
        values = self.base.from_log_probs(lq, lp)
        return values if tau is None else values * tau.to(values.dtype).square()

    def per_token(self, student_rows: Tensor, teacher: TeacherTopK) -> Tensor:
        return self.token_values(student_rows, teacher, None)


def dense_teacher(teacher: TeacherTopK, vocab: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[n, V] teacher log-probabilities: top-k exact, the tail mass spread evenly over the other tokens."""
    lp = teacher_buckets(teacher, dtype=dtype)
    n_tail = max(vocab - teacher.k, 1)
    out = (lp[..., -1:] - math.log(n_tail)).expand(*lp.shape[:-1], vocab).clone()
    return out.scatter_(-1, teacher.ids, lp[..., :-1])


def per_token(name: str, student_logits: Tensor, teacher: TeacherTopK, *, tail: str = "student",
              tau: Tensor | None = None, **params) -> Tensor:
    """Per-row divergence `name` between full student logits [N, V] and a sparse teacher -> [N]."""
    return BucketDivergence(build_divergence(name, **params), tail=tail).token_values(student_logits, teacher, tau)


__all__ = [
    "FORMS",
    "TAIL_MODES",
    "BucketDivergence",
    "TeacherTopK",
    "dense_teacher",
    "per_token",
    "student_buckets",
    "teacher_buckets",
    "topk_from_logits",
]
