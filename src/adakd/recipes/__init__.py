"""Data recipes: where the training sequences of a KD run come from (method.recipe).

    offline   the dataset's responses (no batch source; the default)
    sft       the dataset's responses, no teacher
    gkd       on-policy: with probability lambda a micro-batch is replaced by the current student's samples
    distillm  adaptive off-policy: student samples with a probability driven by the validation loss, and a
              replay buffer
    seqkd     the teacher's responses, generated once and cached

`build_recipe(cfg, student=, teacher=, tokenizer=, data=, ctx=, device=, run_dir=)` returns the batch source
the Trainer calls for each micro-batch (`source(batch, trainer) -> batch`; `on_step_end`; state in the
checkpoints). The token loss is untouched: the method's divergence, wrapped by AdaKD when adakd is on.

recipe_params (method.recipe_params) and their defaults are in RECIPE_DEFAULTS; unknown keys are refused
by `check_recipe_params` (adakd.validate).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from .base import BatchSource
from .common import Sampling
from .distillm import (
    REPLAY_RATIOS,
    VAL_LOSSES,
    VAL_REFERENCES,
    AdaptiveProbability,
    DistiLLMSource,
    ReplayBuffer,
)
from .gkd import GKDSource
from .seqkd import SeqKDSource

_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": None, "gen_batch_size": None}

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "offline": {},
    "sft": {},
    "gkd": {"lambda": 0.5, **_SAMPLING},
    "distillm": {"replay_capacity": 1000, "prob_init": 0.0, "prob_step": 0.1, "prob_max": 1.0,
                 "val_loss_rise": 0.1, "val_every": None, "val_samples": 1000, "val_loss": "kd",
                 "val_reference": "last_rise", "replay_ratio": "decreasing", **_SAMPLING},
    "seqkd": {"seed": 0, **_SAMPLING, "gen_batch_size": 32},
}
log = logging.getLogger(__name__)
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
    """Config errors of method.recipe_params (empty when fine); used by adakd.validate."""
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


def _sampling(p: dict[str, Any], default_batch: int) -> Sampling:
    return Sampling(temperature=float(p["temperature"]), top_k=int(p["top_k"]), top_p=float(p["top_p"]),
                    max_new_tokens=None if p["max_new_tokens"] is None else int(p["max_new_tokens"]),
                    batch_size=int(p["gen_batch_size"] or default_batch))


def build_recipe(cfg, *, student, teacher, tokenizer, data, ctx, device, run_dir: Path) -> BatchSource | None:
    """The batch source of cfg.method.recipe (None for offline / sft)."""
    from ..distributed import info

    recipe = cfg.method.recipe
    if recipe in ("offline", "sft"):
        return None
    p = recipe_params(recipe, cfg.method.get("recipe_params"))
    rank = info().rank
    max_len = int(cfg.dataset.max_len)
    micro = int(cfg.train.micro_batch)
    if recipe == "gkd":
        return GKDSource(student=student, tokenizer=tokenizer, seed=int(cfg.train.seed), lam=float(p["lambda"]),
                         sampling=_sampling(p, micro), max_len=max_len, run_dir=run_dir, rank=rank)
    if recipe == "distillm":
        from ..pipeline import encode_train
        dev_examples = data.dev[: p["val_samples"]] if p["val_samples"] else data.dev
        dev = ctx.get(f"enc-dev:{id(tokenizer)}:{id(data)}:{p['val_samples']}",
                      lambda: encode_train(dev_examples, tokenizer, cfg.dataset)) if dev_examples else []
        val_every = int(cfg.train.val_every or 0) or (int(p["val_every"]) if p["val_every"] else 0)
        if not val_every:   # the released code: once per epoch (eval_interval -1)
            from ..pipeline import encode_train as _enc
            n_train = len(ctx.get(f"enc:{id(tokenizer)}:{id(data)}", lambda: _enc(data.train, tokenizer, cfg.dataset)))
            val_every = max(1, math.ceil(n_train / int(cfg.train.global_batch)))
        schedule = AdaptiveProbability(init=float(p["prob_init"]), step=float(p["prob_step"]),
                                       rise=float(p["val_loss_rise"]), maximum=float(p["prob_max"]),
                                       reference=str(p["val_reference"]))
        return DistiLLMSource(student=student, teacher=teacher, tokenizer=tokenizer, seed=int(cfg.train.seed),
                              dev=dev, divergence=str(cfg.method.divergence),
                              div_params=dict(cfg.method.get("params") or {}), schedule=schedule,
                              capacity=int(p["replay_capacity"]), replay_ratio=str(p["replay_ratio"]),
                              val_every=val_every, val_loss=str(p["val_loss"]), val_batch=micro,
                              chunk_size=int(cfg.train.loss_chunk_size), sampling=_sampling(p, micro),
                              max_len=max_len, run_dir=run_dir, rank=rank)
    if recipe == "seqkd":
        from ..pipeline import teacher_recipe_hash
        if float(cfg.method.kd_ratio) == 0.0 and (cfg.adakd.latf or cfg.adakd.idts):
            log.warning("method=seqkd with kd_ratio=0 trains by cross-entropy on the teacher's responses: there "
                        "is no token-level KD loss for AdaKD (adakd=%s) to wrap; set method.kd_ratio > 0 for that",
                        cfg.adakd.name)
        return SeqKDSource(teacher=teacher, tokenizer=tokenizer,
                           cache_root=Path(cfg.run.output_root).absolute() / "cache" / "seqkd",
                           teacher_key=teacher_recipe_hash(cfg), sampling=_sampling(p, 32), seed=int(p["seed"]),
                           max_len=max_len, run_dir=run_dir, rank=rank, progress=bool(cfg.run.progress))
    raise ValueError(f"unknown recipe {recipe!r}")


__all__ = [
    "ON_POLICY", "RECIPE_DEFAULTS", "AdaptiveProbability", "BatchSource", "DistiLLMSource", "GKDSource",
    "ReplayBuffer", "Sampling", "SeqKDSource", "build_recipe", "check_recipe_params", "recipe_params",
]
