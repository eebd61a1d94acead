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
    # Online only: seconds wandb.init may take to reach the server; past it, this process logs offline (one
    # warning) instead of blocking ~90 s in every run of a command (W&B's own default).
    init_timeout: float = 15.0
