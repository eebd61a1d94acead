"""The batch source of method.recipe (training.recipes), built from the config: GKD's on-policy samples,
DistiLLM's adaptive off-policy sampling with its replay buffer and dev loss, SeqKD's cached teacher
responses. None for offline and sft."""
from __future__ import annotations

import logging
import math
from typing import Optional

from omegaconf import DictConfig

from ..training import distributed
from ..training.recipes import (ON_POLICY, AdaptiveProbability, BatchSource, DistiLLMSource, GKDSource,
                                PolicyEngine, Sampling, SeqKDSource, recipe_params)
from .context import Context
from .data import RunData, encoded_dev, encoded_train
from .engine import open_policy_engine, open_teacher_engine
from .plan import JobPlan
from .teacher import Teacher

log = logging.getLogger(__name__)


def student_policy_engine(cfg: DictConfig, plan: JobPlan, student, tokenizer) -> PolicyEngine:
    """A vLLM engine for the student being trained, started at its first use (recipes' samples, dev
    validation), with room for a training sequence and for an evaluation prompt plus its answer."""
    need = max(int(cfg.dataset.max_len), int(cfg.eval.max_prompt_len) + int(cfg.eval.max_new_tokens))
    return PolicyEngine(lambda: open_policy_engine(cfg, student, tokenizer, plan.run_dir, plan.device, need))


def build_recipe(cfg: DictConfig, plan: JobPlan, *, student, teacher: Teacher, tokenizer, data: RunData,
                 ctx: Context, student_engine: Optional[PolicyEngine] = None) -> Optional[BatchSource]:
    """`student_engine`: the vLLM engine that samples the student (shared with dev validation), used by the
    on-policy recipes when they sample with vLLM. Reads the method, dataset, train, eval, adakd and run
    sections."""
    run_dir = plan.run_dir
    recipe = cfg.method.recipe
    if recipe in ("offline", "sft"):
        return None
    p = recipe_params(recipe, cfg.method.get("recipe_params"))
    rank = distributed.info().rank
    max_len = int(cfg.dataset.max_len)
    micro = int(cfg.train.micro_batch)
    engine = str(p.get("engine") or cfg.eval.engine)
    sampling = Sampling.from_params(p, micro, engine)
    policy = None
    if recipe in ON_POLICY and engine == "vllm":
        policy = student_engine or student_policy_engine(cfg, plan, student, tokenizer)
        policy.refresh_every = int(p["refresh_every"])
    if recipe == "gkd":
        return GKDSource(student=student, tokenizer=tokenizer, seed=int(cfg.train.seed), lam=float(p["lambda"]),
                         sampling=sampling, max_len=max_len, run_dir=run_dir, rank=rank, policy_engine=policy)
    if recipe == "distillm":
        n = int(p["val_samples"]) if p["val_samples"] else None
        dev = encoded_dev(cfg.dataset, tokenizer, data, ctx, n) if data.dev else []
        val_every = int(p["val_every"] or 0)
        if not val_every:   # the released code: once per epoch (eval_interval -1)
            n_train = len(encoded_train(cfg.dataset, tokenizer, data, ctx))
            val_every = max(1, math.ceil(n_train / int(cfg.train.global_batch)))
        schedule = AdaptiveProbability(init=float(p["prob_init"]), step=float(p["prob_step"]),
                                       rise=float(p["val_loss_rise"]), maximum=float(p["prob_max"]),
                                       reference=str(p["val_reference"]))
        return DistiLLMSource(student=student, teacher=teacher.model, tokenizer=tokenizer, seed=int(cfg.train.seed),
                              dev=dev, divergence=str(cfg.method.divergence),
                              div_params=dict(cfg.method.get("params") or {}), schedule=schedule,
                              capacity=int(p["replay_capacity"]), replay_ratio=str(p["replay_ratio"]),
                              val_every=val_every, val_loss=str(p["val_loss"]), val_batch=micro,
                              chunk_size=int(cfg.train.loss_chunk_size), sampling=sampling,
                              max_len=max_len, run_dir=run_dir, rank=rank, policy_engine=policy)
    if recipe == "seqkd":
        if float(cfg.method.kd_ratio) == 0.0 and (cfg.adakd.latf or cfg.adakd.idts):
            log.warning("method=seqkd with kd_ratio=0 trains by cross-entropy on the teacher's responses: there "
                        "is no token-level KD loss for AdaKD to wrap; set method.kd_ratio > 0 for that")
        open_engine = None
        if engine == "vllm":
            def open_engine():
                return open_teacher_engine(cfg, plan, teacher, tokenizer)
        return SeqKDSource(teacher=teacher.model, tokenizer=tokenizer, cache_root=plan.caches.seqkd,
                           teacher_key=plan.teacher_key, sampling=Sampling.from_params(p, 32, engine),
                           seed=int(p["seed"]), max_len=max_len, run_dir=run_dir, rank=rank,
                           progress=bool(cfg.run.progress), open_engine=open_engine)
    raise ValueError(f"unknown recipe {recipe!r}")
