"""What the training loop is told, typed and frozen: `TrainSettings`, built once from the config's train
section (and the method's loss mixing) by `train_settings`; the Trainer takes it beside the objects it uses.

The loop reads each setting from here, never from the config, so a loop can be built without a composed config
(the teacher's fine-tune, the shipped models' pretraining, the benchmarks) and every setting it reads is listed
in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Tuple

import torch

SELECTIONS = ("last", "best_dev")        # train.select: the student evaluated and exported
NONFINITE_POLICIES = ("stop", "skip")   # train.nonfinite: stop with a diagnostic, or skip the step


@dataclass(frozen=True)
class TrainSettings:
    total_steps: int
    global_batch: int                    # sequences per optimizer step, over all processes
    micro_batch: int                     # sequences per forward pass (cut to a process's share if larger)
    # optimizer and schedule (train.lr ... train.grad_clip)
    lr: float
    min_lr: float
    weight_decay: float
    betas: Tuple[float, float]
    schedule: str
    warmup_steps: int
    grad_clip: float
    seed: int                            # the data order and, on a fresh start, every random stream
    # how the losses are computed
    loss_impl: str = "chunked"
    loss_chunk_size: int = 1024
    # the method's loss mixing: (1 - kd_ratio) * CE + kd_ratio * KD when there is a teacher and an objective;
    # its name, base divergence and the divergence's parameters are named in a non-finite loss's diagnostic
    kd_ratio: float = 0.0
    method: str = "sft"
    divergence: Optional[str] = None
    divergence_params: Dict[str, Any] = field(default_factory=dict)
    # logs, checkpoints, non-finite steps
    log_every: int = 10
    ckpt_every: int = 0                  # steps between checkpoints (0: only at the end)
    keep_last: int = 2
    telemetry_every: int = 0             # steps between per-token telemetry rows (0: none)
    nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    progress: bool = True
    # dev validation after these steps (0: before the first); select=best_dev keeps the best dev ROUGE-L's weights
    val_steps: FrozenSet[int] = frozenset()
    select: str = "last"
    # where it runs: autocast dtype on CUDA (None: fp32), this process among world_size
    autocast_dtype: Optional[torch.dtype] = None
    world_size: int = 1
    rank: int = 0


def train_settings(train, *, total_steps: int, method=None, **run: Any) -> TrainSettings:
    """TrainSettings from a train section (a composed config's, or the schema's TrainConfig merged with a
    fine-tune recipe) and a method section (None: plain cross-entropy); `run`: the settings a run decides
    (telemetry_every, progress, val_steps, autocast_dtype, world_size, rank)."""
    mixing = {}
    if method is not None:
        mixing = {"kd_ratio": float(method.kd_ratio), "method": str(method.name),
                  "divergence": method.get("divergence"), "divergence_params": dict(method.get("params") or {})}
    return TrainSettings(
        total_steps=int(total_steps), global_batch=int(train.global_batch), micro_batch=int(train.micro_batch),
        lr=train.lr, min_lr=train.min_lr, weight_decay=train.weight_decay, betas=tuple(train.betas),
        schedule=str(train.schedule), warmup_steps=int(train.warmup_steps), grad_clip=train.grad_clip,
        seed=int(train.seed), loss_impl=str(train.loss_impl), loss_chunk_size=int(train.loss_chunk_size),
        log_every=int(train.log_every), ckpt_every=int(train.ckpt_every), keep_last=int(train.keep_last),
        nonfinite=str(train.nonfinite), max_nonfinite_skips=int(train.max_nonfinite_skips),
        select=str(train.select), **mixing, **run)
