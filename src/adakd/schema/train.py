"""`train` group: the optimisation, the loss implementation, checkpoints, the top-k teacher cache
(conf/train/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class TeacherCacheConfig:
    # Off-policy recipes (offline, seqkd): read the teacher's top-k log-probabilities + tail mass per response
    # token from a memory-mapped cache built once per (teacher, training tokens, k) instead of running the
    # teacher every step (adakd.training.topk_cache). Refused for on-policy recipes (gkd, distillm).
    enabled: bool = False
    k: int = 256
    # dense: rebuild full teacher rows (top-k + the tail spread evenly) | buckets: compare on k+1 buckets
    form: str = "dense"
    # buckets only: the teacher's tail under a temperature != 1 (IDTS): student | uniform | atom
    tail: str = "student"


@dataclass
class TrainConfig:
    steps: Optional[int] = None      # total optimizer steps; null -> epochs over the training set
    epochs: float = 1.0
    global_batch: int = 32
    micro_batch: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"         # cosine | constant | linear
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 10
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    threads: Optional[int] = None    # torch CPU threads; null -> all cores
    loss_impl: str = "chunked"       # reference | chunked | fused
    loss_chunk_size: int = 1024
    # Fused loss with LATF / IDTS: MiB of pass-1 logits kept for pass 2 instead of recomputing them (the hardest
    # tokens first; speed only, never values). null: derived from the fused loss's memory floor (dL/dW + dL/dh +
    # a chunk of logits per role), so that the loss stays within twice it (kd.objective.logit_cache); 0: none.
    fused_logit_cache_mb: Optional[float] = None
    log_every: int = 10
    ckpt_every: int = 200            # steps between checkpoints (0 = only at the end)
    keep_last: int = 2
    # Validation on the dev split (training.validation): dev CE, the plain base divergence to the teacher and
    # dev ROUGE-L, in train_log.jsonl and plots/validation.png. Steps between validations; null: once per epoch
    # for epoch-based runs (train.steps null), 5 times over the run otherwise, fewer where val_budget needs;
    # 0: never. Always before step 1 and after the last step.
    val_every: Optional[int] = None
    # dev prompts whose generations are scored by ROUGE-L (0: none); null: 50, fewer where val_budget needs
    val_samples: Optional[int] = None
    # dev sequences scored by CE and the divergence; null: all, fewer where val_budget needs
    val_examples: Optional[int] = None
    # The most that dev validation may cost, as a share of the training's cost, both estimated from the config,
    # the data and the model sizes (training.val_plan): it sizes the open settings above, and a warning says when
    # the settings given exceed it; null: no limit. A third keeps the world miniature's schedule (estimated 22 %
    # of its distillation, 30 % of its SFT) and cuts a short run of a real model down to two cheap validations.
    val_budget: Optional[float] = 0.33
    # Which student is evaluated and exported: last (as the released scripts) | best_dev (best dev ROUGE-L)
    select: str = "last"
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    nonfinite: str = "stop"          # stop | skip (skip the step, up to max_nonfinite_skips)
    max_nonfinite_skips: int = 10
    fsdp: bool = False               # shard the student with FSDP2 across the torchrun processes
    preflight: bool = True           # estimate memory from the configs before loading weights; refuse if short
    preflight_margin: float = 0.9    # warn when the estimate exceeds this fraction of the free memory
