"""The stateless core (the project's contract):

    adakd_loss(student_logits, teacher_logits, labels, *, divergence, ratio=1.0, idts=False, c, tau_base,
               metric, direction, **params) -> (loss, stats)

The defaults of divergence, c, tau_base, metric and direction are the config schema's (adakd.schema: rkl,
and the paper's AdaKD settings), so each is written once.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ...schema.adakd import AdakdConfig
from ...schema.method import MethodConfig
from ...schema.train import TrainConfig
from ..adaptive.difficulty import DifficultyMetric
from ..adaptive.temperature import IDTS, ConstantTemperature
from ..losses import build_divergence
from .inputs import check_chunk, check_impl, check_ratio, check_shapes
from .pipeline import run_pipeline
from .rows import LogitRows, ReferenceRows
from .vocab import DEFAULT_MAX_VOCAB_PAD, shared_vocab

_ADAKD, _TRAIN = AdakdConfig(), TrainConfig()


def adakd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    divergence: str = MethodConfig.divergence,
    ratio: float = 1.0,
    idts: bool = False,
    c: float = _ADAKD.c,
    tau_base: float = _ADAKD.tau_base,
    metric: str = _ADAKD.metric,
    direction: str = _ADAKD.direction,
    impl: str = _TRAIN.loss_impl,
    chunk_size: int = _TRAIN.loss_chunk_size,
    generator: Optional[torch.Generator] = None,
    nmtkd_k: int = _ADAKD.nmtkd_k,
    telemetry: bool = False,
    max_vocab_pad: int = DEFAULT_MAX_VOCAB_PAD,
    **params: Any,
) -> Tuple[Tensor, Dict[str, Any]]:
    """AdaKD loss of one micro-batch. `**params` go to the divergence (alpha, beta, mu, ...).

    Shapes: logits [B, L, V], labels [B, L] aligned with the logit positions (-100 = not a response
    token). ratio = LATF keep ratio r (1 = every valid token); idts = per-token temperatures (else
    tau_base for all); `impl` "reference" | "chunked" (memory-bounded; "fused" is the same here, since
    logits are given); `generator` is required by metric="random". With ratio = 1 and idts = False this
    is exactly mean_i D(student_i, teacher_i). Returns (scalar loss, stats of python floats; with
    telemetry=True also stats["_tensors"]).
    """
    div = build_divergence(divergence, **params)
    if metric == "random" and generator is None:
        raise ValueError("metric='random' needs an explicit generator=torch.Generator(...) (no global RNG)")
    diff = DifficultyMetric(metric, k=nmtkd_k, generator=generator)
    policy = IDTS(c=c, tau_base=tau_base, direction=direction) if idts else ConstantTemperature(tau_base)
    impl = "chunked" if check_impl(impl) == "fused" else impl  # logits given: fused == chunked
    check_shapes(student_logits[..., :1], teacher_logits[..., :1], labels)
    v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], max_vocab_pad)
    src = (ReferenceRows if impl == "reference" else LogitRows)(student_logits, teacher_logits, v)
    return run_pipeline(
        src,
        (student_logits,),
        labels,
        div=div,
        metric=diff,
        ratio=check_ratio(ratio),
        policy=policy,
        impl=impl,
        chunk_size=check_chunk(chunk_size),
        telemetry=telemetry,
        fused=False,
    )
