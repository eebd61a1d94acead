"""Data recipes: where the training sequences of a KD run come from (method.recipe).

    offline   the dataset's responses (no batch source; the default)
    sft       the dataset's responses, no teacher
    gkd       on-policy: with probability lambda a micro-batch is replaced by the current student's samples
    distillm  adaptive off-policy: student samples with a probability driven by the validation loss, and a
              replay buffer
    seqkd     the teacher's responses, generated once and cached

A recipe's batch source (built by assemble.recipes from the config) is what the Trainer calls for each
micro-batch (`source(batch, trainer) -> batch`; `on_step_end`; state in the checkpoints). The token loss is untouched: the method's divergence, wrapped by AdaKD when adakd is on.

method.recipe_params: each recipe's parameters are typed once, with their defaults and valid values, in
adakd.schema.recipes; `recipe_params` fills in the defaults and `check_recipe_params` (run by
experiment.config_check) checks a config's values against that table.
"""
from __future__ import annotations

import math
from typing import Any

from ...schema.recipes import RECIPE_PARAMS, defaults
from .base import BatchSource
from .common import PolicyEngine, Sampling
from .distillm import AdaptiveProbability, DistiLLMSource, ReplayBuffer
from .gkd import GKDSource
from .seqkd import SeqKDSource

# Each recipe's method.recipe_params at their defaults (adakd.schema.recipes).
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {name: defaults(name) for name in RECIPE_PARAMS}
RECIPES = tuple(RECIPE_DEFAULTS)
ON_POLICY = ("gkd", "distillm")   # sequences drawn from the current student during training


def recipe_params(recipe: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe's parameters: its defaults updated by method.recipe_params (unknown keys refused)."""
    if recipe not in RECIPE_DEFAULTS:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPE_DEFAULTS)}")
    defaults = RECIPE_DEFAULTS[recipe]
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"method.recipe_params: unknown key(s) {unknown} for recipe {recipe}; valid: {valid}")
    return {**defaults, **params}


def check_recipe_params(recipe: str, params: dict[str, Any] | None) -> list[str]:
    """Config errors of method.recipe_params (empty when fine), against adakd.schema.recipes; used by
    adakd.experiment.config_check."""
    try:
        values = recipe_params(recipe, params)
    except ValueError as e:
        return [str(e)]
    errors: list[str] = []
    for key, spec in RECIPE_PARAMS[recipe].items():
        v, name = values[key], f"method.recipe_params.{key}"
        if spec.choices is not None:
            if v not in spec.choices:
                errors.append(f"{name}={v!r} is not valid; choose one of {list(spec.choices)}")
        elif v is None and spec.optional:
            continue
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (spec.integer and int(v) != v) \
                or (isinstance(v, float) and not math.isfinite(v)):
            errors.append(f"{name}={v!r} must be a{'n integer' if spec.integer else ' number'}")
        elif spec.range is not None and v not in spec.range:
            errors.append(f"{name}={v} is out of range {spec.range.text()}")
    return errors


__all__ = [
    "ON_POLICY", "RECIPE_DEFAULTS", "AdaptiveProbability", "BatchSource", "DistiLLMSource", "GKDSource",
    "PolicyEngine", "RECIPES", "ReplayBuffer", "Sampling", "SeqKDSource", "check_recipe_params", "recipe_params",
]
