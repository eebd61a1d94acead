"""Structured configs: the schema every composed config is checked against.

A typo in an override (`adakd.idst=true`) or a value of the wrong type fails at composition with a
message naming the key; an unknown group option (`method=fkll`) fails listing the valid options.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from .evaluation import EvalConfig
from .objective import AdakdConfig, MethodConfig


@dataclass
class ModelSpec:
    # scratch: a new model from `arch` (random init, seeded); pretrained: `path` is a hub id or a local
    # directory; pruned: a layer-pruned copy of the teacher (keep_layers or every_k).
    source: str = "scratch"
    path: Optional[str] = None
    arch: Dict[str, Any] = field(default_factory=dict)   # GPT-2 config fields for source=scratch
    init_seed: int = 0
    keep_layers: Optional[List[int]] = None
    every_k: Optional[int] = None
    dtype: str = "float32"              # weights dtype at load (teacher may be bf16/fp16 on GPU; fp32 on CPU)
    device: Optional[str] = None        # teacher only: e.g. cuda:1 to keep it off the student's GPU
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: Dict[str, Any] = field(default_factory=dict)    # {r, alpha, dropout, target_modules}; empty = off
    # Teacher only: fine-tune on the training set first (cached by config); recipe in `finetune`.
    finetune: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "synthetic"
    # "synthetic": a byte-level BPE trained on the synthetic corpus (no download); otherwise a hub id or
    # a local directory (default: the teacher's path).
    tokenizer: str = "synthetic"
    tokenizer_vocab: int = 1024
    teacher: ModelSpec = field(default_factory=ModelSpec)
    student: ModelSpec = field(default_factory=ModelSpec)
    # A shipped teacher checkpoint (directory inside the package or a path) used when it matches the
    # teacher recipe; `make teacher` rebuilds it.
    teacher_asset: Optional[str] = None


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    # Local data directory with the layout of ../shared/data; null -> $ADAKD_DATA_DIR.
    root: Optional[str] = None
    train_split: str = "train"
    # Synthetic task family sizes (dataset=synthetic only).
    n_train: int = 20000
    n_dev: int = 500
    n_test: int = 500
    seed: int = 0
    tasks: Optional[List[str]] = None
    # Validation split: dev file of the dataset, or this many training samples held out.
    val_size: int = 1000
    max_train_samples: Optional[int] = None
    max_prompt_len: int = 256
    max_len: int = 512
    overlong: str = "drop"          # drop (MiniLLM) | truncate (released AdaKD code)
    chat_template: bool = False


@dataclass
class TeacherCacheConfig:
    # Off-policy recipes (offline, seqkd): read the teacher's top-k log-probabilities + tail mass per response
    # token from a memory-mapped cache built once per (teacher, training tokens, k) instead of running the
    # teacher every step (adakd.teacher_cache). Refused for on-policy recipes (gkd, distillm).
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
    log_every: int = 10
    ckpt_every: int = 200            # steps between checkpoints (0 = only at the end)
    keep_last: int = 2
    val_every: int = 0               # steps between validation-loss evaluations (0 = never)
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    nonfinite: str = "stop"          # stop | skip (skip the step, up to max_nonfinite_skips)
    max_nonfinite_skips: int = 10
    fsdp: bool = False               # shard the student with FSDP2 across the torchrun processes
    preflight: bool = True           # estimate memory from the configs before loading weights; refuse if short
    preflight_margin: float = 0.9    # warn when the estimate exceeds this fraction of the free memory


@dataclass
class LoggerConfig:
    name: str = "wandb"              # wandb | none
    project: str = "adakd"
    entity: Optional[str] = None
    mode: str = "offline"            # offline | online | disabled ($WANDB_MODE wins)
    tags: List[str] = field(default_factory=list)


@dataclass
class RunSection:
    # train: train the student with `method` (sft or distillation), then evaluate it.
    # eval_teacher / eval_init: evaluate the teacher / the untrained student, no training.
    stage: str = "train"
    # Extra rows computed (and cached) around a `train` run: teacher, student_init, sft.
    baselines: List[str] = field(default_factory=list)
    name: Optional[str] = None       # run-name prefix; default <method>-<adakd>
    output_root: str = "outputs"
    progress: bool = True
    print_table: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    adakd: AdakdConfig = field(default_factory=AdakdConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunSection = field(default_factory=RunSection)
    # A table preset's definition (experiments/table*.yaml): rows, their overrides, the paper's numbers.
    # Read by the sweep and the renderer (adakd.sweep, adakd.report); not part of a run's identity.
    table: Optional[Dict[str, Any]] = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="adakd_schema", node=RunConfig)


__all__ = [
    "AdakdConfig", "DatasetConfig", "EvalConfig", "LoggerConfig", "MethodConfig", "ModelConfig",
    "ModelSpec", "RunConfig", "RunSection", "TeacherCacheConfig", "TrainConfig", "register_configs",
]
