"""Structured configs: the schema every composed config is checked against.

Each option is defined once, here, with its default and what it means; the YAML files under conf/ hold
only what differs from these defaults. One module per config group (model, dataset, method, adakd, train,
eval, logger, run). A typo in an override (`adakd.idst=true`) or a value of the wrong type fails at
composition with a message naming the key (the schema is registered with Hydra by `schema.store`); an
unknown group option (`method=fkll`) fails listing the valid options. Value checks (ranges, choices) are
in adakd.experiment.config_check, which reads each list of choices from the module that defines it and each
range from where it is written once (`adakd.RANGES`; the recipes' parameters, typed in `recipes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .adakd import AdakdConfig
from .dataset import DatasetConfig
from .evaluation import EvalConfig
from .logger import LoggerConfig
from .method import MethodConfig
from .model import ModelConfig, ModelSpec
from .run import RunSection
from .train import TeacherCacheConfig, TrainConfig


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
    # Read by the sweep and the renderer (adakd.experiment.sweep, adakd.report); not part of a run's identity.
    table: Optional[Dict[str, Any]] = None


__all__ = [
    "AdakdConfig", "DatasetConfig", "EvalConfig", "LoggerConfig", "MethodConfig", "ModelConfig",
    "ModelSpec", "RunConfig", "RunSection", "TeacherCacheConfig", "TrainConfig",
]
