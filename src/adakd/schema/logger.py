"""`logger` group: W&B (offline by default) or none (conf/logger/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class LoggerConfig:
    name: str = "wandb"              # wandb | none
    project: str = "adakd"
    entity: Optional[str] = None
    mode: str = "offline"            # offline | online | disabled ($WANDB_MODE wins)
    tags: List[str] = field(default_factory=list)
