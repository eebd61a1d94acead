"""Base divergences of knowledge distillation, one class per divergence.

    per_token(name, student_logits[N, V], teacher_logits[N, V], **params) -> Tensor[N]
    build_divergence(name, **params) -> Divergence    (parameters validated here)
    DIVERGENCES: name -> class

Adding a divergence: one class (subclass of `Divergence`, `from_log_probs`) registered below, plus
`conf/method/<name>.yaml`.
"""

from __future__ import annotations

from typing import Any, Dict, Type

from torch import Tensor

from .abkd import AlphaBeta
from .akl import AdaptiveKL
from .base import Divergence, compute_dtype, log_probs
from .fkl import ForwardKL
from .jsd import JensenShannon
from .rkl import ReverseKL
from .sfkl import SkewForwardKL
from .srkl import SkewReverseKL
from .tvd import TotalVariation

DIVERGENCES: Dict[str, Type[Divergence]] = {
    cls.name: cls
    for cls in (
        ForwardKL,
        ReverseKL,
        JensenShannon,
        TotalVariation,
        SkewForwardKL,
        SkewReverseKL,
        AlphaBeta,
        AdaptiveKL,
    )
}


def build_divergence(name: str, **params: Any) -> Divergence:
    try:
        cls = DIVERGENCES[name]
    except KeyError:
        raise ValueError(f"unknown divergence {name!r}; choose one of: {', '.join(DIVERGENCES)}") from None
    return cls(**params)


def per_token(name: str, student_logits: Tensor, teacher_logits: Tensor, **params: Any) -> Tensor:
    """Per-row divergence between student and teacher logits ([N, V] each) -> [N]."""
    return build_divergence(name, **params).per_token(student_logits, teacher_logits)


__all__ = [
    "DIVERGENCES",
    "Divergence",
    "build_divergence",
    "per_token",
    "compute_dtype",
    "log_probs",
    "ForwardKL",
    "ReverseKL",
    "JensenShannon",
    "TotalVariation",
    "SkewForwardKL",
    "SkewReverseKL",
    "AlphaBeta",
    "AdaptiveKL",
]
