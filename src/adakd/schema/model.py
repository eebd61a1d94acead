"""`model` group: the teacher / student pair (conf/model/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
