"""The one record type every data source produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    prompt: str                 # rendered prompt (Alpaca template), what the model sees
    references: List[str]       # >= 1 reference responses; references[0] is the training target
    id: str = ""                # stable id: seeds the per-example sampling stream
    meta: Dict[str, Any] = field(default_factory=dict)   # source file/line, category, ...
