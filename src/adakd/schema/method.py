"""`method` group: the base KD divergence and the training-data recipe (conf/method/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class MethodConfig:
    # Name of the preset (conf/method/<name>.yaml); recorded in results and tables.
    name: str = "rkl"
    # Base token divergence: fkl rkl jsd tvd sfkl srkl abkd akl, or "none" (pure SFT).
    divergence: str = "rkl"
    # Where the training responses come from: offline (dataset), sft (no teacher),
    # gkd (on-policy student samples mixed in), distillm (adaptive student outputs + replay), seqkd.
    recipe: str = "offline"
    # loss = (1 - kd_ratio) * CE + kd_ratio * KD
    kd_ratio: float = 1.0
    # Parameters forwarded to the divergence (alpha, beta, mu, ...); validated by the divergence.
    params: Dict[str, Any] = field(default_factory=dict)
    # Parameters of the data recipe (gkd / distillm / seqkd): typed, with their defaults, in schema.recipes.
    recipe_params: Dict[str, Any] = field(default_factory=dict)
