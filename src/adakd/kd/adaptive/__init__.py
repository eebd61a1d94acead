"""AdaKD's adaptive parts: token difficulty, LATF ratio schedules, per-token temperatures."""

from __future__ import annotations

from .difficulty import METRICS, DifficultyMetric, difficulty
from .ratio import (
    SCHEDULES,
    ConstantRatio,
    CosineRatio,
    LATFController,
    LinearRatio,
    RatioSchedule,
    build_ratio_schedule,
)
from .temperature import (
    DIRECTIONS,
    IDTS,
    TEMPERATURES,
    ConstantTemperature,
    CTKDTemperature,
    LogitStandardization,
    TemperaturePolicy,
    build_temperature,
    gradient_reversal,
    idts_temperatures,
    standardize_logits,
)

__all__ = [
    "METRICS",
    "DifficultyMetric",
    "difficulty",
    "SCHEDULES",
    "RatioSchedule",
    "ConstantRatio",
    "LinearRatio",
    "CosineRatio",
    "LATFController",
    "build_ratio_schedule",
    "DIRECTIONS",
    "TEMPERATURES",
    "TemperaturePolicy",
    "ConstantTemperature",
    "IDTS",
    "CTKDTemperature",
    "LogitStandardization",
    "build_temperature",
    "gradient_reversal",
    "idts_temperatures",
    "standardize_logits",
]
