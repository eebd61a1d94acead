"""Identity: the names of run directories and caches, each a hash of exactly what determines the content.

- A run directory is `<output_root>/runs/<name>-<hash>`: the hash covers the resolved config without the keys
  that do not change results (NON_SEMANTIC_KEYS: where and how it runs, logging) and without the sections the
  run's task does not use (experiment.tasks), plus the sha256 of the training (and dev) files of a file
  dataset, so edited training data is another run. Benchmark test files are not part of it: a finished run
  whose benchmark files changed is evaluated again in place (experiment.runner).
- The teacher's key covers what shapes the teacher: its spec (not its device), the tokenizer, the training
  data and its limits. It names the fine-tuned teacher cache and is recorded in a shipped checkpoint.
- Caches (tokenizer, fine-tuned teacher, top-k teacher logits, SeqKD responses) live under
  `<output_root>/cache/`.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from .. import runinfo
from ..data.benchmarks import DataError, benchmark_file, file_sha256_cached
from .data import GENERATED

# Keys that do not change a run's results: left out of the run-directory hash.
NON_SEMANTIC_KEYS = [
    "logger", "run.baselines", "run.progress", "run.print_table", "run.output_root",
    "eval.batch_size", "train.threads", "train.log_every", "train.ckpt_every", "train.keep_last",
    # where and how it runs, not what it computes (world size / FSDP: docs/scale.md)
    "train.fsdp", "train.preflight", "train.preflight_margin", "model.teacher.device", "model.student.device",
    # how the vLLM engine schedules and where it keeps its cache (the samples do not depend on it: tested)
    "eval.vllm.requests_per_call", "eval.vllm.max_num_seqs", "eval.vllm.cpu_kv_cache_gib",
    "eval.vllm.gpu_memory_utilization",
]
# The dataset keys that shape the training sequences (and so the teacher fine-tuned on them).
DATA_KEYS = ("name", "train_split", "n_train", "seed", "tasks", "max_prompt_len", "max_len", "overlong",
             "chat_template", "max_train_samples")


def _drop(c: Dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
        node = node.get(p) or {}
    if isinstance(node, dict):
        node.pop(leaf, None)


def semantic_config(cfg: DictConfig, unused: Iterable[str] = ()) -> Dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in [*NON_SEMANTIC_KEYS, *unused]:
        _drop(c, key)
    if not (c.get("dataset") or {}).get("world"):   # only dataset=world has one: other runs keep their hash
        (c.get("dataset") or {}).pop("world", None)
    # The teacher cache off is the plain live-teacher run: the same directory as before the setting existed.
    # The native engine is the run as it was before engines existed: the same directory (for the evaluation,
    # and for a recipe's sampling, whose engine follows eval.engine unless it names its own).
    ev = c.get("eval") or {}
    eval_engine = ev.get("engine", "native")
    if eval_engine == "native":
        ev.pop("engine", None)
        ev.pop("vllm", None)
    recipe = (c.get("method") or {}).get("recipe_params")
    if isinstance(recipe, dict) and "engine" in recipe and (recipe["engine"] or eval_engine) == "native":
        recipe.pop("engine", None)
        recipe.pop("refresh_every", None)
    # The end-of-answer temperature not held (a diagnostic switch) is the run as before the switch existed.
    # So is the tau_half switch at "both" (the method).
    adakd = c.get("adakd") or {}
    if "end_tau" in adakd and adakd["end_tau"] is None:
        adakd.pop("end_tau")
    if adakd.get("tau_half") == "both":
        adakd.pop("tau_half")
    train = c.get("train") or {}
    if not (train.get("teacher_cache") or {}).get("enabled", False):
        train.pop("teacher_cache", None)
    # The fused loss's logit-cache budget changes speed and memory only (tests/test_fused_cache.py pins the
    # values at every budget): hashed as its former default whatever it is set to, so run directories keep
    # the names they had when the default was 640 MiB.
    if "fused_logit_cache_mb" in train:
        train["fused_logit_cache_mb"] = 640.0
    return c


def training_files(cfg: DictConfig) -> List[Dict[str, str]]:
    """(split, sha256) of the files a file dataset trains and validates on; none for generated datasets.
    A file that is not there yet contributes nothing (the run then fails on reading its data)."""
    ds = cfg.dataset
    if ds.name in GENERATED:
        return []
    out = []
    for split in dict.fromkeys([str(ds.train_split), "dev"]):
        try:
            path = benchmark_file(ds.name, ds.root, split=split, hub_repo=ds.get("hub_repo"))
            out.append({"split": split, "sha256": file_sha256_cached(path)})
        except (DataError, OSError):   # missing or unreadable: reading the data says so, naming the file
            continue
    return out


def run_dir(cfg: DictConfig, name: str, unused: Iterable[str] = ()) -> Path:
    ident: Dict[str, Any] = semantic_config(cfg, unused)
    files = training_files(cfg)
    if files:   # generated datasets keep the hash they always had
        ident = {"config": ident, "training_files": files}
    return output_root(cfg.run) / "runs" / f"{name}-{runinfo.config_hash(ident)}"


def teacher_key(cfg: DictConfig) -> str:
    """Identity of the teacher a run needs: architecture / source, tokenizer, training data and recipe."""
    ds = cfg.dataset
    data_key: Dict[str, Any] = {k: ds.get(k) for k in DATA_KEYS}
    world = ds.get("world")
    if world:
        data_key["world"] = OmegaConf.to_container(world, resolve=True) if OmegaConf.is_config(world) else world
    files = training_files(cfg)
    if files:
        data_key["files"] = files
    teacher = OmegaConf.to_container(cfg.model.teacher, resolve=True)
    teacher.pop("device", None)   # where it runs is not what it is
    return runinfo.config_hash({"teacher": teacher, "tokenizer": cfg.model.tokenizer,
                                "vocab": cfg.model.tokenizer_vocab, "data": data_key})


def output_root(run: DictConfig) -> Path:
    """The run section's output_root as an absolute path (`~` expanded, as for model paths: see model_path)."""
    return Path(os.path.expanduser(str(run.output_root))).absolute()


def cache_root(run: DictConfig) -> Path:
    return output_root(run) / "cache"


def finetuned_teacher_dir(cfg: DictConfig, key: Optional[str] = None) -> Path:
    """The fine-tuned teacher's cache; `key`: teacher_key(cfg) where the caller holds it (a job's plan)."""
    return cache_root(cfg.run) / "teacher" / (key or teacher_key(cfg))


def tokenizer_dir(cfg: DictConfig) -> Path:
    """The BPE trained on the generated corpus, by what determines it."""
    ds = cfg.dataset
    key: Dict[str, Any] = {"vocab": cfg.model.tokenizer_vocab, "n_train": ds.n_train, "seed": ds.seed,
                           "tasks": ds.tasks}
    if ds.name != "synthetic":
        key["dataset"] = ds.name
        if ds.get("world"):
            key["world"] = OmegaConf.to_container(ds.world, resolve=True)
    return cache_root(cfg.run) / "tokenizer" / runinfo.config_hash(key)


# Below a cache root (cache_root): the caches the trainer's and the recipes' wiring read (assemble.plan).
def topk_root(cache: Path) -> Path:
    """The top-k teacher caches, one directory per training.topk_cache.cache_key below it."""
    return cache / "teacher_topk"


def seqkd_root(cache: Path) -> Path:
    """SeqKD's teacher responses, one directory per cache key below it (training.recipes.seqkd)."""
    return cache / "seqkd"


def vllm_teacher_dir(cache: Path, key: str) -> Path:
    """The teacher of `key` saved for a vLLM engine to load (when it has no checkpoint of its own)."""
    return cache / "vllm-teacher" / key


def asset_dir(spec: Optional[str]) -> Optional[Path]:
    """A model directory named in a config: `builtin:<name>` is the package's assets/<name>."""
    if not spec:
        return None
    if str(spec).startswith("builtin:"):
        return Path(str(resources.files("adakd") / "assets" / str(spec)[len("builtin:"):]))
    return Path(spec)


def model_path(spec: str) -> str:
    """The path or hub id to load: `builtin:<name>` resolved to the package's asset, `~` expanded (the one place
    model paths are expanded: the validator and the loaders see the same path), anything else as written (a
    relative path keeps its ./ so it is not taken for a hub id)."""
    if str(spec).startswith("builtin:"):
        return str(asset_dir(spec))
    return os.path.expanduser(str(spec)) if str(spec).startswith("~") else str(spec)
