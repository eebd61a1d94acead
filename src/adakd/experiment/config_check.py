"""Config checks that run before any data or model is loaded: a bad setting costs seconds, not an hour.

Types, and unknown keys without `+`, are refused by the structured schema at composition. Here: keys added
with `+` that the schema does not know (they would be ignored), keys of the free-form sections (a GPT-2
`arch`, a teacher's `finetune`), names that must be in a registry (each list read from the module that
defines it), ranges, and settings that must agree. Every problem is reported at once, one line each.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, List

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import GPT2Config

from ..data.prompts import OVERLONG_POLICIES
from ..errors import ConfigError
from ..kd.adaptive.difficulty import METRICS
from ..kd.adaptive.ratio import SCHEDULES as RATIO_SCHEDULES
from ..kd.adaptive.temperature import DIRECTIONS, TAU_HALVES, TEMPERATURES
from ..kd.losses import DIVERGENCES
from ..kd.losses.sparse import FORMS, TAIL_MODES
from ..kd.objective import IMPLS as LOSS_IMPLS
from ..models import ModelLoadError, check_local_or_hub, check_model_dir
from ..models.lora import KEYS as LORA_KEYS
from ..training.settings import NONFINITE_POLICIES, SELECTIONS
from ..training.recipes import ON_POLICY, RECIPES, check_recipe_params
from ..training import val_plan
from ..training.schedule import LR_SCHEDULES
from ..assemble.construct import SOURCES
from ..assemble.devices import PRECISIONS
from ..data.world import WorldSpec
from ..assemble.engine import sampling_engine_errors
from ..assemble.identity import model_path
from ..evaluation.generation import TRUNCATION_SIDES
from ..evaluation.vllm_engine import engine_errors
from ..schema import RunConfig, TrainConfig
from ..schema.adakd import RANGES as ADAKD_RANGES
from ..schema.ranges import Range
from .tasks import BASELINES, STAGES

DEVICE = r"auto|cpu|cuda(:\d+)?"
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}"   # one path component, no traversal, short enough for any disk
# Sections whose keys are free in the schema (Dict[str, Any]) and checked elsewhere: the divergence's and the
# recipe's parameters by their owners, LoRA here (_scale), arch and finetune below, the table by the sweep, the
# world's size against data.world.WorldSpec.
FREE_SECTIONS = ("model.teacher.arch", "model.student.arch", "model.teacher.lora", "model.student.lora",
                 "model.teacher.finetune", "model.student.finetune", "method.params", "method.recipe_params",
                 "table", "dataset.world")
GPT2_FIELDS = sorted(set(GPT2Config().to_dict()) | {"type"})
# Float settings that may be infinite or NaN (a schema field that means "no limit" by inf goes here). None now:
# every other float must be finite, wherever it is (schema, free sections, lists), as NaN passes every range
# check and an infinity ends in a non-finite loss after work has started.
NONFINITE_OK: tuple = ()


def _choice(errors: List[str], key: str, value, valid) -> None:
    if value not in valid:
        errors.append(f"{key}={value!r} is not valid; choose one of {sorted(valid)}")


def _range(errors: List[str], key: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    _in(errors, key, value, Range(lo, hi, lo_open, hi_open))


def _in(errors: List[str], key: str, value, valid: Range) -> None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return   # non-finite values are refused by _finite, with one message
    if value not in valid:
        errors.append(f"{key}={value} is out of range {valid.text()}")


def _unknown(errors: List[str], key: str, given, valid) -> None:
    for k in sorted(set(given) - set(valid)):
        near = difflib.get_close_matches(str(k), list(valid), n=1)
        hint = f"; did you mean {near[0]}?" if near else f"; valid: {sorted(valid)}"
        errors.append(f"{key + '.' if key else ''}{k} is not a setting (it would be ignored){hint}")


def _schema_keys(errors: List[str], node: Any, schema: Any, path: str) -> None:
    """Keys of the composed config that the schema does not have (e.g. `+train.lrr=1`)."""
    if not isinstance(node, dict) or not isinstance(schema, dict) or path in FREE_SECTIONS:
        return
    _unknown(errors, path, node, schema)
    for k, v in node.items():
        if k in schema:
            _schema_keys(errors, v, schema[k], f"{path}.{k}" if path else str(k))


def _resolved(cfg: DictConfig) -> dict:
    """The config with every interpolation resolved: a broken one (`train.lr=${nope}`) is a setting error."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"invalid configuration:\n  - {key + ': ' if key else ''}{msg}") from None


def _finite(errors: List[str], node: Any, path: str) -> None:
    """One rule for numbers: every float setting is finite (NaN compares false with every bound)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _finite(errors, v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _finite(errors, v, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node) and path.split("[")[0] not in NONFINITE_OK:
        errors.append(f"{path}={node} is not a finite number")


def validate_config(cfg: DictConfig) -> None:
    e: List[str] = []
    _finite(e, _resolved(cfg), "")
    _schema_keys(e, OmegaConf.to_container(cfg, resolve=False),
                 OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False), "")
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
    _choice(e, "adakd.tau_half", a.tau_half, TAU_HALVES)
    for key, valid in ADAKD_RANGES.items():
        if a[key] is not None:   # an optional setting (adakd.end_tau) left unset has no range to be in
            _in(e, f"adakd.{key}", a[key], valid)
    _choice(e, "train.loss_impl", t.loss_impl, LOSS_IMPLS)
    _choice(e, "train.schedule", t.schedule, LR_SCHEDULES)
    _choice(e, "train.nonfinite", t.nonfinite, NONFINITE_POLICIES)
    _train_ranges(e, "train", t)
    _choice(e, "train.precision", t.precision, PRECISIONS)
    _choice(e, "train.select", t.select, SELECTIONS)
    _range(e, "train.val_samples", t.val_samples, 0, None)
    if t.select == "best_dev" and (t.val_every == 0 or t.val_samples == 0):
        e.append("train.select=best_dev picks the student with the best dev ROUGE-L: it needs validation "
                 "(train.val_every != 0) with generations (train.val_samples > 0)")
    if not re.fullmatch(DEVICE, str(t.device)):
        e.append(f"train.device={t.device!r} is not valid; use auto, cpu, cuda or cuda:N")
    _choice(e, "dataset.overlong", d.overlong, OVERLONG_POLICIES)
    _unknown(e, "dataset.world", d.get("world") or {}, list(WorldSpec.__dataclass_fields__))
    for k, v in (d.get("world") or {}).items():
        if k in WorldSpec.__dataclass_fields__:
            _range(e, f"dataset.world.{k}", v, 0 if k == "seed" else 1, None)
    for key in ("n_train", "n_dev", "n_test", "val_size", "max_train_samples"):
        _range(e, f"dataset.{key}", d[key], 1, None)
    if not 0 < d.max_prompt_len < d.max_len:
        e.append(f"need 0 < dataset.max_prompt_len < dataset.max_len, got {d.max_prompt_len}, {d.max_len}")
    if not ev.seeds:
        e.append("eval.seeds is empty")
    repeated = sorted({s for s in ev.seeds if list(ev.seeds).count(s) > 1})
    if repeated:   # two identical samples would report a spread of 0 and feed the paired t-test twice
        e.append(f"eval.seeds={list(ev.seeds)} repeats {repeated}: each generation seed must appear once")
    if not ev.benchmarks:
        e.append("eval.benchmarks is empty")
    _range(e, "eval.max_new_tokens", ev.max_new_tokens, 1, None)
    _range(e, "eval.temperature", ev.temperature, 0.0, None)
    _range(e, "eval.top_p", ev.top_p, 0.0, 1.0, lo_open=True)
    _range(e, "eval.top_k", ev.top_k, 0, None)
    _range(e, "eval.max_samples", ev.max_samples, 1, None)
    _range(e, "eval.batch_size", ev.batch_size, 1, None)
    _range(e, "eval.max_prompt_len", ev.max_prompt_len, 1, None)
    _range(e, "eval.no_repeat_ngram_size", ev.no_repeat_ngram_size, 0, None)
    _choice(e, "eval.prompt_truncation", ev.prompt_truncation, TRUNCATION_SIDES)
    e += engine_errors(ev) + sampling_engine_errors(cfg) + val_plan.setting_errors(t)
    name = cfg.run.name
    if name is not None and (not re.fullmatch(RUN_NAME, str(name)) or ".." in str(name)):
        e.append(f"run.name={name!r} must be one plain name (letters, digits, . _ + = -; at most 100 characters; "
                 "no slashes or '..'): run directories are <run.output_root>/runs/<name>-<hash>")
    root = Path(os.path.expanduser(str(cfg.run.output_root)))
    if root.exists() and not root.is_dir():
        e.append(f"run.output_root={cfg.run.output_root} is not a directory: name a directory (made if missing)")
    _model_paths(e, cfg.model)
    _scale(e, cfg)
    _recipe(e, cfg)
    if e:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(e))


def _train_ranges(errors: List[str], prefix: str, t) -> None:
    """The optimisation settings' ranges: of the run's `train` section and of a teacher's `finetune`."""
    e = errors
    _range(e, f"{prefix}.lr", t.lr, 0.0, None, lo_open=True)
    _range(e, f"{prefix}.micro_batch", t.micro_batch, 1, None)
    _range(e, f"{prefix}.global_batch", t.global_batch, 1, None)
    _range(e, f"{prefix}.steps", t.steps, 1, None)
    _range(e, f"{prefix}.epochs", t.epochs, 0.0, None, lo_open=True)
    _range(e, f"{prefix}.loss_chunk_size", t.loss_chunk_size, 1, None)
    if t.micro_batch >= 1 and t.global_batch % t.micro_batch:
        e.append(f"{prefix}.global_batch={t.global_batch} is not divisible by {prefix}.micro_batch={t.micro_batch}")
    for key, lo in (("min_lr", 0), ("weight_decay", 0), ("warmup_steps", 0), ("grad_clip", 0), ("ckpt_every", 0),
                    ("keep_last", 1), ("log_every", 1), ("val_every", 0), ("max_nonfinite_skips", 0),
                    ("threads", 1)):
        _range(e, f"{prefix}.{key}", t[key], lo, None)
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        e.append(f"{prefix}.betas={list(t.betas)} must be two numbers in [0, 1)")


def _model_paths(errors: List[str], model) -> None:
    """A local model or tokenizer directory that is not there (or a model directory that cannot be loaded), or a
    hub id while the hub does not answer, fails now, not after the data and the baselines."""
    paths = []
    for role in ("teacher", "student"):
        spec = model.get(role)
        if spec is not None and spec.get("source") == "pretrained" and spec.get("path"):
            paths.append((f"model.{role}.path", model_path(spec.path), True))
    tok = model.get("tokenizer")
    if tok and tok not in ("synthetic", "teacher"):
        paths.append(("model.tokenizer", model_path(tok), False))
    for key, path, is_model in paths:
        try:
            check_local_or_hub(path)
            if is_model:
                check_model_dir(path)
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
        _choice(errors, f"model.{role}.source", spec.get("source"), SOURCES)
        _unknown(errors, f"model.{role}.lora", spec.get("lora") or {}, LORA_KEYS)
        if spec.get("source") == "scratch":
            _unknown(errors, f"model.{role}.arch", spec.get("arch") or {}, GPT2_FIELDS)
        finetune = spec.get("finetune") or {}
        _unknown(errors, f"model.{role}.finetune", finetune, list(TrainConfig.__dataclass_fields__))
        if finetune:   # the ranges of `train`, on the fine-tune's settings over their defaults
            known = {k: v for k, v in finetune.items() if k in TrainConfig.__dataclass_fields__}
            try:
                merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), known)
            except OmegaConfBaseException as err:
                errors.append(f"model.{role}.finetune: {str(err).splitlines()[0]}")
            else:
                _train_ranges(errors, f"model.{role}.finetune", merged)
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
