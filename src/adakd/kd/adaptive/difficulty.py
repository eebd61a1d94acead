"""Token difficulty s_i: the "unified metric" that ranks tokens for LATF and sets IDTS temperatures.

Every metric is computed at temperature 1 on the raw logits, without gradient (the paper detaches),
in float32 at least. Higher = harder. Row-wise metrics see one [n, V] chunk at a time; `random` and
`all` need no logits at all.

| name          | s_i                                                                  |
|---------------|----------------------------------------------------------------------|
| hellinger     | (1/sqrt 2)·sqrt(sum_v (sqrt p_v - sqrt q_v)^2) in [0, 1]  (default)  |
| fkl / rkl     | KL(p || q) / KL(q || p)                                              |
| jsd           | Jensen-Shannon with beta = 0.5                                       |
| ce            | -log q(label): student cross-entropy on the ground-truth token       |
| nmtkd         | top-k ranking violations (NMT-KD's top-1 and top-k terms), k = 5     |
| entropy       | student entropy -sum_v q_v log q_v                                   |
| bhattacharyya | -log sum_v sqrt(p_v q_v)                                             |
| random        | uniform [0, 1) from an explicit torch.Generator                      |
| all           | 1 for every token: every token kept, tau = tau_base (no ranking)     |
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...schema.adakd import AdakdConfig
from ..losses import JensenShannon, compute_dtype, log_probs
from ..losses.base import kl_rows
from ..losses.sparse import TeacherTopK, dense_teacher, student_buckets, teacher_buckets

_A = AdakdConfig()   # the defaults, defined once in the schema

METRICS = ("hellinger", "fkl", "rkl", "jsd", "ce", "nmtkd", "entropy", "bhattacharyya", "random", "all")


def _hellinger(lq: Tensor, lp: Tensor) -> Tensor:
    # sqrt(p) = exp(log p / 2): exact for tiny probabilities, 0 on -inf slots. lq and lp are this
    # function's own buffers (fresh log-softmax outputs), so they are reused in place.
    diff = lp.mul_(0.5).exp_().sub_(lq.mul_(0.5).exp_())
    return diff.square_().sum(-1).sqrt().mul_(1.0 / math.sqrt(2.0)).clamp_max(1.0)


def _bhattacharyya(lq: Tensor, lp: Tensor) -> Tensor:
    bc = (0.5 * (lp + lq)).exp().sum(-1)
    return -bc.clamp(min=torch.finfo(bc.dtype).tiny, max=1.0).log()


def _entropy(lq: Tensor) -> Tensor:
    return -(lq.exp() * torch.nan_to_num(lq, neginf=0.0)).sum(-1)


def _nmtkd(lq: Tensor, lp: Tensor, k: int) -> Tensor:
    """Probability mass by which the student's ranking contradicts the teacher's among the top-k.

    top-1 term: sum over the teacher's top-k tokens u of relu(q_u - q_top1(teacher));
    top-k term: sum over u in the teacher's top-k and v in the student's top-k where the teacher
    prefers u to v (p_u > p_v) of relu(q_v - q_u).
    """
    k = min(k, lp.shape[-1])
    p, q = lp.exp(), lq.exp()
    p_tk, idx_t = p.topk(k, dim=-1)
    q_sk, idx_s = q.topk(k, dim=-1)
    q_at_t = q.gather(-1, idx_t)  # student prob of the teacher's top-k
    p_at_s = p.gather(-1, idx_s)  # teacher prob of the student's top-k
    top1 = F.relu(q_at_t - q_at_t[..., :1]).sum(-1)
    prefers = p_tk.unsqueeze(-1) > p_at_s.unsqueeze(-2)  # [n, k(u), k(v)]
    margin = F.relu(q_sk.unsqueeze(-2) - q_at_t.unsqueeze(-1))  # q_v - q_u
    return top1 + (margin * prefers).sum((-1, -2))


class DifficultyMetric:
    """A named difficulty metric. `rows(...)` scores rows of logits; `constant(n)` the others."""

    def __init__(self, name: str = _A.metric, *, k: int = _A.nmtkd_k, generator: Optional[torch.Generator] = None):
        if name not in METRICS:
            raise ValueError(f"unknown difficulty metric {name!r}; choose one of: {', '.join(METRICS)}")
        if int(k) != k or k < 1:
            raise ValueError(f"nmtkd k must be an integer >= 1, got {k!r}")
        self.name, self.k, self.generator = name, int(k), generator

    @property
    def uses_logits(self) -> bool:
        return self.name not in ("random", "all")

    @property
    def keeps_all(self) -> bool:
        """`all` distils every valid token whatever the ratio (the released code's meaning)."""
        return self.name == "all"

    @torch.no_grad()
    def constant(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """Scores of the logit-free metrics, drawn for all n tokens at once (chunking-invariant)."""
        if self.name == "all":
            return torch.ones(n, device=device, dtype=dtype)
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        return torch.rand(n, generator=self.generator, device=gen_device, dtype=dtype).to(device)

    @torch.no_grad()
    def rows(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Optional[Tensor] = None,
        scratch: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        """Scores of rows of logits, leaving them intact. `scratch`: two buffers in the compute dtype with as
        many rows for the two log-softmaxes (the fused path's workspace), else new ones."""
        if not self.uses_logits:
            dtype = compute_dtype(student_logits, teacher_logits)
            return self.constant(student_logits.shape[0], student_logits.device, dtype)
        dtype = compute_dtype(student_logits, teacher_logits)
        out_q, out_p = (None, None) if scratch is None else scratch
        lq = log_probs(student_logits, dtype, out=out_q)
        if self.name == "entropy":
            return _entropy(lq)
        if self.name == "ce":
            if labels is None:
                raise ValueError("difficulty metric 'ce' needs the ground-truth labels")
            if int(labels.max()) >= lq.shape[-1] or int(labels.min()) < 0:
                raise ValueError(f"ce difficulty: label ids must be in [0, {lq.shape[-1]})")
            return -lq.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        lp = log_probs(teacher_logits, dtype, out=out_p)
        if self.name == "hellinger":
            return _hellinger(lq, lp)
        if self.name == "fkl":
            return kl_rows(lp, lq)
        if self.name == "rkl":
            return kl_rows(lq, lp)
        if self.name == "jsd":
            return JensenShannon(beta=0.5).from_log_probs(lq, lp)
        if self.name == "bhattacharyya":
            return _bhattacharyya(lq, lp)
        if self.name == "nmtkd":
            return _nmtkd(lq, lp, self.k)
        raise AssertionError(self.name)  # pragma: no cover


def difficulty(
    metric: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    labels: Optional[Tensor] = None,
    k: int = _A.nmtkd_k,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Functional form: difficulty of each row of [N, V] logits -> [N] (no gradient)."""
    return DifficultyMetric(metric, k=k, generator=generator).rows(student_logits, teacher_logits, labels)


class BucketMetric:
    """A `DifficultyMetric` evaluated against a `TeacherTopK` (tau = 1, no gradient): on the k + 1 buckets of
    kd.losses.sparse (nmtkd on the dense rebuild; entropy and ce use the student alone and are exact)."""

    def __init__(self, base):
        self.base = base
        self.name, self.k, self.generator = base.name, base.k, base.generator

    @property
    def uses_logits(self) -> bool:
        return self.base.uses_logits

    @property
    def keeps_all(self) -> bool:
        return self.base.keeps_all

    def constant(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.base.constant(n, device, dtype)

    @torch.no_grad()
    def rows(self, student_logits: Tensor, teacher: TeacherTopK, labels: Tensor | None = None) -> Tensor:
        name = self.name
        if not self.uses_logits or name in ("entropy", "ce"):   # no teacher involved: exact
            return self.base.rows(student_logits, student_logits, labels)
        dtype = compute_dtype(student_logits, teacher.logprobs)
        if name == "nmtkd":
            return _nmtkd(F.log_softmax(student_logits.to(dtype), -1), dense_teacher(teacher, student_logits.shape[-1],
                                                                                     dtype), self.k)
        lq = student_buckets(student_logits.to(dtype), teacher.ids)
        lp = teacher_buckets(teacher, dtype=dtype)
        if name == "hellinger":
            return _hellinger(lq, lp)
        if name == "fkl":
            return kl_rows(lp, lq)
        if name == "rkl":
            return kl_rows(lq, lp)
        if name == "jsd":
            return JensenShannon(beta=0.5).from_log_probs(lq, lp)
        if name == "bhattacharyya":
            return _bhattacharyya(lq, lp)
        raise AssertionError(name)  # pragma: no cover
