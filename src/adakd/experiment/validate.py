"""Config checks that run before any data or model is loaded: a bad setting costs seconds, not an hour.

Types and unknown keys are already refused by the structured schema at composition; here are the
checks of values: names that must be in a registry, ranges, and settings that must agree.
"""
from __future__ import annotations

import re
from typing import List

from omegaconf import DictConfig

from ..data.prompts import OVERLONG_POLICIES
from ..kd.adaptive.difficulty import METRICS
from ..kd.adaptive.ratio import SCHEDULES as RATIO_SCHEDULES
from ..kd.adaptive.temperature import DIRECTIONS, TEMPERATURES
from ..kd.losses import DIVERGENCES
from ..kd.losses.sparse import FORMS, TAIL_MODES
from ..kd.objective import IMPLS as LOSS_IMPLS
from ..models import ModelLoadError, check_local_or_hub
from ..models.lora import KEYS as LORA_KEYS
from ..training.loop import NONFINITE_POLICIES
from ..training.recipes import ON_POLICY, RECIPES, check_recipe_params
from ..training.schedule import LR_SCHEDULES
from .tasks import BASELINES, STAGES


class ConfigError(ValueError):
    pass


def _choice(errors: List[str], key: str, value, valid) -> None:
    if value not in valid:
        errors.append(f"{key}={value!r} is not valid; choose one of {sorted(valid)}")


def _range(errors: List[str], key: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        errors.append(f"{key}={value} is out of range {lb}{lo if lo is not None else '-inf'}, "
                      f"{hi if hi is not None else 'inf'}{rb}")


def validate_config(cfg: DictConfig) -> None:
    e: List[str] = []
    _choice(e, "run.stage", cfg.run.stage, STAGES)
    for b in cfg.run.baselines:
        _choice(e, "run.baselines[]", b, BASELINES)
    m, a, t, d, ev = cfg.method, cfg.adakd, cfg.train, cfg.dataset, cfg.eval
    _choice(e, "method.recipe", m.recipe, RECIPES)
    if m.recipe == "sft":
        if m.divergence != "none":
            e.append("method.recipe=sft trains without a teacher: set method.divergence=none")
    else:
        _choice(e, "method.divergence", m.divergence, list(DIVERGENCES))
    _range(e, "method.kd_ratio", m.kd_ratio, 0.0, 1.0)
    _choice(e, "adakd.metric", a.metric, list(METRICS))
    _choice(e, "adakd.ratio_schedule", a.ratio_schedule, RATIO_SCHEDULES)
    _choice(e, "adakd.temperature", a.temperature, TEMPERATURES)
    _choice(e, "adakd.direction", a.direction, DIRECTIONS)
    _range(e, "adakd.ratio_start", a.ratio_start, 0.0, 1.0, lo_open=True)
    _range(e, "adakd.ratio_end", a.ratio_end, 0.0, 1.0, lo_open=True)
    _range(e, "adakd.ratio_min", a.ratio_min, 0.0, 1.0, lo_open=True)
    _range(e, "adakd.ema_beta", a.ema_beta, 0.0, 1.0, hi_open=True)
    _range(e, "adakd.warmup_frac", a.warmup_frac, 0.0, 1.0)
    _range(e, "adakd.epsilon", a.epsilon, 0.0, None)
    _range(e, "adakd.delta", a.delta, 0.0, 1.0, hi_open=True)
    _range(e, "adakd.c", a.c, 0.0, None)
    _range(e, "adakd.tau_base", a.tau_base, 0.0, None, lo_open=True)
    _range(e, "adakd.nmtkd_k", a.nmtkd_k, 1, None)
    _choice(e, "train.loss_impl", t.loss_impl, LOSS_IMPLS)
    _choice(e, "train.schedule", t.schedule, LR_SCHEDULES)
    _choice(e, "train.nonfinite", t.nonfinite, NONFINITE_POLICIES)
    _range(e, "train.lr", t.lr, 0.0, None, lo_open=True)
    _range(e, "train.micro_batch", t.micro_batch, 1, None)
    _range(e, "train.global_batch", t.global_batch, 1, None)
    _range(e, "train.steps", t.steps, 1, None)
    _range(e, "train.epochs", t.epochs, 0.0, None, lo_open=True)
    _range(e, "train.loss_chunk_size", t.loss_chunk_size, 1, None)
    if t.global_batch % t.micro_batch:
        e.append(f"train.global_batch={t.global_batch} is not divisible by train.micro_batch={t.micro_batch}")
    _choice(e, "dataset.overlong", d.overlong, OVERLONG_POLICIES)
    if not 0 < d.max_prompt_len < d.max_len:
        e.append(f"need 0 < dataset.max_prompt_len < dataset.max_len, got {d.max_prompt_len}, {d.max_len}")
    if not ev.seeds:
        e.append("eval.seeds is empty")
    if not ev.benchmarks:
        e.append("eval.benchmarks is empty")
    _range(e, "eval.max_new_tokens", ev.max_new_tokens, 1, None)
    _range(e, "eval.temperature", ev.temperature, 0.0, None)
    _range(e, "eval.top_p", ev.top_p, 0.0, 1.0, lo_open=True)
    _range(e, "eval.top_k", ev.top_k, 0, None)
    _range(e, "eval.max_samples", ev.max_samples, 1, None)
    _model_paths(e, cfg.model)
    _scale(e, cfg)
    _recipe(e, cfg)
    if e:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(e))


def _model_paths(errors: List[str], model) -> None:
    """A local model or tokenizer directory that is not there fails now, not after the data and the
    baselines (hub ids are left to the loader)."""
    paths = []
    for role in ("teacher", "student"):
        spec = model.get(role)
        if spec is not None and spec.get("source") == "pretrained" and spec.get("path"):
            paths.append((f"model.{role}.path", str(spec.path)))
    tok = model.get("tokenizer")
    if tok and tok not in ("synthetic", "teacher"):
        paths.append(("model.tokenizer", str(tok)))
    for key, path in paths:
        try:
            check_local_or_hub(path)
        except ModelLoadError as err:
            errors.append(f"{key}: {err}")


def _scale(errors: List[str], cfg: DictConfig) -> None:
    """Pruned students, LoRA settings, devices, FSDP (docs/scale.md)."""
    for role in ("teacher", "student"):
        spec = cfg.model.get(role)
        if spec is None:
            continue
        if spec.get("source") == "pruned":
            if role == "teacher":
                errors.append("model.teacher.source=pruned: only a student is made by pruning the teacher")
            elif (spec.get("keep_layers") is None) == (spec.get("every_k") is None):
                errors.append("model.student.source=pruned needs exactly one of model.student.keep_layers "
                              "(block indices) or model.student.every_k (keep blocks 0, k, 2k, ...)")
        unknown = sorted(set(spec.get("lora") or {}) - set(LORA_KEYS))
        if unknown:
            errors.append(f"model.{role}.lora has unknown key(s) {unknown}; valid: {sorted(LORA_KEYS)}")
        dev = spec.get("device")
        if dev and not re.fullmatch(r"cpu|cuda(:\d+)?", str(dev)):
            errors.append(f"model.{role}.device={dev!r}: use cpu, cuda or cuda:N")
    t = cfg.train
    if t.get("fsdp") and t.loss_impl == "fused":
        errors.append("train.fsdp=true needs train.loss_impl=chunked or reference (the fused loss reads the "
                      "LM head's weight outside the sharded forward)")
    _range(errors, "train.preflight_margin", t.get("preflight_margin"), 0.0, 1.0, lo_open=True)


def _recipe(errors: List[str], cfg: DictConfig) -> None:
    """method.recipe_params, and the teacher cache (train.teacher_cache) against the recipe."""
    m, t = cfg.method, cfg.train
    if m.recipe in RECIPES:
        errors.extend(check_recipe_params(m.recipe, m.get("recipe_params")))
    if m.recipe in ON_POLICY and t.get("fsdp"):
        errors.append(f"method.recipe={m.recipe} samples from the student during training, which the FSDP-sharded "
                      "student does not support here; use train.fsdp=false (plain data parallel works)")
    tc = t.get("teacher_cache") or {}
    if not tc.get("enabled", False):
        return
    if m.recipe in ON_POLICY:
        errors.append(f"train.teacher_cache.enabled=true cannot be used with method.recipe={m.recipe}: its training "
                      "sequences are sampled from the current student during training, so the teacher's "
                      "log-probabilities cannot be computed ahead of time. Use the live teacher "
                      "(train.teacher_cache.enabled=false); the cache serves off-policy recipes (offline, seqkd)")
    if m.recipe == "sft":
        errors.append("train.teacher_cache.enabled=true with method.recipe=sft: SFT has no teacher to cache")
    _range(errors, "train.teacher_cache.k", tc.get("k"), 1, None)
    _choice(errors, "train.teacher_cache.form", tc.get("form"), list(FORMS))
    _choice(errors, "train.teacher_cache.tail", tc.get("tail"), list(TAIL_MODES))
    if t.loss_impl == "fused":
        errors.append("train.teacher_cache.enabled=true needs train.loss_impl=chunked or reference (the cached "
                      "teacher has no hidden states for the fused loss)")
    if cfg.adakd.temperature == "logit_std" and not cfg.adakd.idts:
        errors.append("train.teacher_cache.enabled=true with adakd.temperature=logit_std: logit standardisation "
                      "needs the teacher's full logits, which the top-k cache does not have")
