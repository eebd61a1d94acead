"""Shared machinery of the base divergences.

A divergence is math on rows of logits and nothing else: it never sees labels, masks, token
selection or temperatures (the objective owns those). Every divergence is written on normalised
log-probabilities (`from_log_probs(lq, lp)`, student q, teacher p), so a sparse teacher (its top-k
log-probabilities plus one tail bucket) can later be served by handing in [N, k+1] rows.

Numerics:
- math runs in float32 at least: bf16/fp16 inputs are upcast, float64 stays float64;
- `-inf` logits are zero-probability slots: 0·log 0 counts 0. Where a log-ratio would be infinite
  (one distribution has mass on a slot where the other has probability exactly 0), that zero is
  floored at the smallest normal number of the compute dtype (log tiny = -87.3 in float32, -708.4
  in float64). So the loss stays finite and >= 0, its gradient is NaN-free and still pushes mass off
  the impossible token; every value that is finite in exact math is computed exactly. (The MiniLLM /
  DistiLLM code drops such terms instead, which can make a KL negative and push the wrong way.)
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...schema.ranges import Range


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_probs(logits: Tensor, dtype: torch.dtype, overwrite: bool = False, out: Optional[Tensor] = None) -> Tensor:
    """log_softmax in `dtype`, by the same kernel whatever the buffer (bit-identical values).

    `overwrite`: `logits` is a private buffer the caller no longer needs; the result is written over it.
    `out`: a scratch buffer in `dtype` with as many rows (the fused path's workspace), used otherwise.
    """
    if not logits.requires_grad:
        if overwrite and logits.dtype == dtype and logits.is_contiguous():
            return torch.log_softmax(logits, dim=-1, out=logits)
        if out is not None:
            out = out[: logits.shape[0]]
            if logits.dtype != dtype:
                return torch.log_softmax(out.copy_(logits), dim=-1, out=out)
            return torch.log_softmax(logits, dim=-1, out=out)
    return F.log_softmax(logits.to(dtype), dim=-1)


def log_floor(dtype: torch.dtype) -> float:
    """log of the smallest normal number: the stand-in for log 0 where a log-ratio would be infinite."""
    return math.log(torch.finfo(dtype).tiny)


def log_ratio(lw: Tensor, lo: Tensor) -> Tensor:
    """log w - log o for the terms w·log(w/o): exact where both are finite.

    lo = -inf (o = 0 under positive w) is floored at `log_floor`; lw = -inf (w = 0) gives 0, the
    limit of w·log(w/o). `nan_to_num` keeps finite entries bit-exact and masks the gradient of the
    replaced ones, so no NaN reaches the backward pass. NaN inputs stay NaN.
    """
    nan = float("nan")
    lo = torch.nan_to_num(lo, nan=nan, neginf=log_floor(lo.dtype))
    return torch.nan_to_num(lw - lo, nan=nan, neginf=0.0)


def kl_rows(lw: Tensor, lo: Tensor) -> Tensor:
    """Per-row KL(w || o) from log-probabilities: sum_v w_v (log w_v - log o_v)."""
    return (lw.exp() * log_ratio(lw, lo)).sum(-1)


def log_mix(la: Tensor, lb: Tensor, wa: float) -> Tensor:
    """log(wa·a + (1 - wa)·b) from log-probabilities, computed in log space.

    Exact at the endpoints (wa = 0 returns lb itself), so skew KL with alpha = 0 is bit-identical
    to plain KL. -inf inputs are clamped to a huge finite negative before `logaddexp`: its
    backward at (-inf, -inf) would be NaN, and the clamp changes no finite value.
    """
    if wa == 0.0:
        return lb
    if wa == 1.0:
        return la
    low = torch.finfo(la.dtype).min / 4
    a = (la + math.log(wa)).clamp_min(low)
    b = (lb + math.log1p(-wa)).clamp_min(low)
    return torch.logaddexp(a, b)


class Divergence:
    """Base class: subclasses set `name`, `defaults`, implement `from_log_probs` and `_validate`.

    `per_token(student_logits[N, V], teacher_logits[N, V]) -> [N]` (any leading dims work).
    Gradients flow to both inputs; the objective passes the teacher detached.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, float]] = {}
    # True where `value_and_grad` is implemented analytically (no autograd graph, fewer temporaries).
    has_analytic_grad: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"{self.name}: unknown parameter(s) {unknown}; valid parameters: {valid}")
        self.params: Dict[str, float] = {}
        for key, default in self.defaults.items():
            value = params.get(key, default)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                raise ValueError(f"{self.name}: parameter {key} must be a finite real number, got {value!r}")
            self.params[key] = float(value)
            setattr(self, key, float(value))
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - overridden where parameters exist
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # -- the API ---------------------------------------------------------------------------------
    def per_token(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"{self.name}: student logits {tuple(student_logits.shape)} and teacher logits "
                f"{tuple(teacher_logits.shape)} differ in shape (align vocabularies first: "
                "adakd.objective.align_vocab)"
            )
        dtype = compute_dtype(student_logits, teacher_logits)
        return self.from_log_probs(log_probs(student_logits, dtype), log_probs(teacher_logits, dtype))

    __call__ = per_token

    def from_log_probs(self, lq: Tensor, lp: Tensor) -> Tensor:
        """Per-row divergence from student log-probs `lq` and teacher log-probs `lp`."""
        raise NotImplementedError

    def value_and_grad(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        overwrite: Tuple[bool, bool] = (False, False),
        scratch: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """(per-row values [N], d sum(values) / d student_logits [N, V]) without keeping a graph.

        The generic version uses autograd on the rows given (the objective hands in one chunk).
        fkl, rkl and jsd override it with closed forms that need two to four [N, V] buffers.
        `overwrite`: the student / teacher rows are private copies the closed forms may overwrite (the
        fused path's freshly computed logits), which saves the buffers of their log-softmax.
        `scratch`: two buffers of at least N rows in the compute dtype for the temporaries (rkl, jsd);
        with it and `overwrite`, the gradient is returned in the student rows' buffer.
        """
        with torch.enable_grad():
            s = student_logits.detach().requires_grad_(True)
            values = self.per_token(s, teacher_logits.detach())
            (grad,) = torch.autograd.grad(values.sum(), s)
        return values.detach(), grad


def check_total_steps(total_steps) -> int:
    """A schedule's length: an integer >= 1 (floats like 1500.0 are accepted)."""
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    return int(total_steps)


def check_in(name: str, key: str, value: float, valid: Range) -> None:
    """check_range against a setting's Range (defined once, in adakd.schema)."""
    check_range(name, key, value, valid.lo, valid.hi, valid.lo_open, valid.hi_open)


def check_range(
    name: str,
    key: str,
    value: float,
    lo: Optional[float],
    hi: Optional[float],
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ValueError naming the valid interval when value is outside it."""
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name}: {key} must be in {left}{lo_s}, {hi_s}{right}, got {value:g}")
