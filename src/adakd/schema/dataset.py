"""`dataset` group: the training set and its length limits (conf/dataset/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    # Local data directory with the layout of ../shared/data; null -> $ADAKD_DATA_DIR.
    root: Optional[str] = None
    # With neither root nor $ADAKD_DATA_DIR: a Hugging Face dataset repository with the same layout (online).
    hub_repo: Optional[str] = None
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
    # dataset=world only: the generated world (adakd.data.world.WorldSpec fields; empty: its defaults).
    world: Dict[str, Any] = field(default_factory=dict)
