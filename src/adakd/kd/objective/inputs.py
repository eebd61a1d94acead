"""What the objective takes: the student and the teacher side of one micro-batch, and their checks.

A side is one of
- a logits tensor [..., V] (teacher logits are treated as constants);
- `HiddenStates`: final hidden states [..., H] and the LM head's weight [V, H] (+ bias [V]); the fused
  path computes logits chunk by chunk and never holds [N, V];
- (teacher only) `TeacherTopK`: the teacher's top-k log-probabilities plus its tail mass, as read from
  the teacher cache (kd.losses.sparse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ...schema.adakd import RATIO
from ..losses.base import check_in

IMPLS = ("reference", "chunked", "fused")


@dataclass
class HiddenStates:
    """Final hidden states and the LM head that turns them into logits: logits = hidden @ weight.T + bias."""

    hidden: Tensor
    weight: Tensor
    bias: Optional[Tensor] = None

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])


def check_shapes(student: Tensor, teacher: Tensor, labels: Tensor, what: str = "logits") -> None:
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


def check_heads(student: HiddenStates, teacher: HiddenStates) -> None:
    for side in (student, teacher):
        if side.weight.dim() != 2 or side.weight.shape[1] != side.hidden.shape[-1]:
            raise ValueError("head weights must be [V, H] with H the hidden size of their model")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown objective implementation {impl!r}; choose one of: {', '.join(IMPLS)}")
    return impl


def check_chunk(chunk_size: int) -> int:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def check_ratio(ratio: float) -> float:
    check_in("adakd", "ratio", float(ratio), RATIO)
    return float(ratio)
