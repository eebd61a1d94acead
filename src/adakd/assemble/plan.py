"""A job resolved once: what it does, where it writes and which caches it reads (every path), the teacher it
needs (its key), where it computes and in which dtype. The runner resolves one `JobPlan` per job
(experiment.runner.execute) and hands it to the build functions, which then read these facts instead of working
them out again from the whole config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
from omegaconf import DictConfig

from .devices import autocast_dtype
from .identity import cache_root, seqkd_root, teacher_key, topk_root, vllm_teacher_dir


@dataclass(frozen=True)
class CachePaths:
    """Where the caches the job's wiring reads or builds live (under <output_root>/cache; identity names each).
    The tokenizer and the fine-tuned teacher find theirs from the config (assemble.tokenizer, assemble.teacher):
    the shipped-model builds use them outside any job."""
    topk: Path          # the top-k teacher caches, one directory per cache key
    seqkd: Path         # SeqKD's teacher responses
    vllm_teacher: Path  # the teacher saved for vLLM sampling


@dataclass(frozen=True)
class JobPlan:
    name: str
    run_dir: Path
    # what the job does (experiment.tasks)
    trains: bool                   # a student is trained before it is evaluated
    distils: bool                  # ... from the teacher
    evaluates: str                 # "teacher" or "student"
    roles: Tuple[str, ...]         # the models whose tokenizers must be the run's
    uses_teacher: bool             # the teacher model is loaded (to distil from, to evaluate, to prune)
    # the teacher it needs: identity.teacher_key, naming the fine-tuned teacher and every teacher-derived cache
    teacher_key: str
    caches: CachePaths
    # where it computes
    device: torch.device
    autocast: Optional[torch.dtype]   # train.precision on this device when it trains (None: fp32)
    cpu_threads: Optional[int]     # the torch CPU thread count (None on CUDA, where results do not depend on it)

    @property
    def evaluates_teacher(self) -> bool:
        return self.evaluates == "teacher"


def plan_job(cfg: DictConfig, *, name: str, run_dir: Path, trains: bool, distils: bool, evaluates: str,
             roles: Tuple[str, ...], uses_teacher: bool, device: torch.device,
             cpu_threads: Optional[int]) -> JobPlan:
    key = teacher_key(cfg)
    cache = cache_root(cfg.run)
    caches = CachePaths(topk=topk_root(cache), seqkd=seqkd_root(cache), vllm_teacher=vllm_teacher_dir(cache, key))
    # only training runs under autocast (autocast_dtype warns of a precision it ignores)
    return JobPlan(name=name, run_dir=run_dir, trains=trains, distils=distils, evaluates=evaluates, roles=roles,
                   uses_teacher=uses_teacher, teacher_key=key, caches=caches, device=device,
                   autocast=autocast_dtype(cfg.train.precision, device) if trains else None,
                   cpu_threads=cpu_threads)
