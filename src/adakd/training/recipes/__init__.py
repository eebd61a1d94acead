"""Data recipes: where the training sequences of a KD run come from (method.recipe).

    offline   the dataset's responses (no batch source; the default)
    sft       the dataset's responses, no teacher
    gkd       on-policy: with probability lambda a micro-batch is replaced by the current student's samples
    distillm  adaptive off-policy: student samples with a probability driven by the validation loss, and a
              replay buffer
    seqkd     the teacher's responses, generated once and cached

A recipe's batch source (built by assemble.recipes from the config) is what the Trainer calls for each
micro-batch (`source(batch, trainer) -> batch`; `on_step_end`; state in the checkpoints). The token loss is untouched: the method's divergence, wrapped by AdaKD when adakd is on.

recipe_params (method.recipe_params) and their defaults are each recipe's PARAMS (collected in RECIPE_DEFAULTS);
unknown keys are refused
by `check_recipe_params` (experiment.config_check).
"""
from __future__ import annotations

import math
from typing import Any

from .base import BatchSource
from .common import ENGINES, PolicyEngine, Sampling
from .distillm import (
    REPLAY_RATIOS,
    VAL_LOSSES,
    VAL_REFERENCES,
    AdaptiveProbability,
    DistiLLMSource,
    ReplayBuffer,
)
from . import distillm, gkd, seqkd
from .gkd import GKDSource
from .seqkd import SeqKDSource

# Each recipe's method.recipe_params with their defaults, defined (and documented) in the recipe's module.
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "offline": {},
    "sft": {},
    "gkd": gkd.PARAMS,
    "distillm": distillm.PARAMS,
    "seqkd": seqkd.PARAMS,
}
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
    """Config errors of method.recipe_params (empty when fine); used by adakd.experiment.config_check."""
    try:
        p = recipe_params(recipe, params)
    except ValueError as e:
        return [str(e)]
    errors: list[str] = []

    def rng(key, lo=None, hi=None, integer=False, optional=False):
        v = p.get(key)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v) \
                or (isinstance(v, float) and not math.isfinite(v)):
            errors.append(f"method.recipe_params.{key}={v!r} must be a{'n integer' if integer else ' number'}")
            return
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            errors.append(f"method.recipe_params.{key}={v} is out of range [{lo}, {hi if hi is not None else 'inf'}]")

    if recipe in ("gkd", "distillm", "seqkd"):
        rng("temperature", 0.0)
        rng("top_k", 0, integer=True)
        rng("top_p", 0.0, 1.0)
        rng("max_new_tokens", 1, integer=True, optional=True)
        rng("gen_batch_size", 1, integer=True, optional=True)
        if p.get("top_p") == 0:
            errors.append("method.recipe_params.top_p=0 keeps no token; use (0, 1]")
        if p.get("engine") not in ENGINES:
            errors.append(f"method.recipe_params.engine={p.get('engine')!r} is not valid; choose one of "
                          f"{list(ENGINES)} (null: as eval.engine)")
    if recipe in ON_POLICY:
        rng("refresh_every", 1, integer=True)
    if recipe == "gkd":
        rng("lambda", 0.0, 1.0)
    if recipe == "distillm":
        rng("replay_capacity", 1, integer=True)
        rng("prob_init", 0.0, 1.0)
        rng("prob_step", 0.0, 1.0)
        rng("prob_max", 0.0, 1.0)
        rng("val_loss_rise", 0.0)
        rng("val_every", 1, integer=True, optional=True)
        rng("val_samples", 1, integer=True, optional=True)
        for key, valid in (("val_loss", VAL_LOSSES), ("val_reference", VAL_REFERENCES),
                           ("replay_ratio", REPLAY_RATIOS)):
            if p.get(key) not in valid:
                errors.append(f"method.recipe_params.{key}={p.get(key)!r} is not valid; choose one of {list(valid)}")
    if recipe == "seqkd":
        rng("seed", 0, integer=True)
    return errors


__all__ = [
    "ON_POLICY", "RECIPE_DEFAULTS", "AdaptiveProbability", "BatchSource", "DistiLLMSource", "GKDSource",
    "PolicyEngine", "RECIPES", "ReplayBuffer", "Sampling", "SeqKDSource", "check_recipe_params", "recipe_params",
]
