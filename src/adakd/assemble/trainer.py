"""The trainer of a run, wired: the encoded training sequences, the teacher side (the live teacher, or its
top-k log-probabilities from the cache), the objective (method + AdaKD), the recipe's batch source, dev
validation, FSDP or data-parallel replicas."""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

from omegaconf import DictConfig

from ..data.prompts import collate_train
from ..io import build_lock
from ..kd.losses import build_divergence
from ..kd.objective import build_objective, shared_vocab
from ..models import count_params, lm_parts
from ..training import distributed
from ..training.loop import Trainer
from ..training.schedule import total_steps
from ..training.settings import train_settings
from ..training.teachers import CachedTeacher
from ..training.topk_cache import TAIL_SENSITIVE, TeacherCache, build as build_topk, cache_key
from ..training import val_plan
from ..training.validation import Validator
from .context import Context
from .data import RunData, encoded_train, usable_dev
from .plan import JobPlan
from .recipes import build_recipe, student_policy_engine
from .teacher import Teacher

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, plan: JobPlan, student, tokenizer, data: RunData, ctx: Context, logger, *,
                  teacher: Optional[Teacher] = None) -> Tuple[Trainer, val_plan.ValPlan]:
    """(trainer, its dev validation plan: recorded in run_info.json). `teacher`: the job's teacher when it distils
    (None: SFT). Reads the method, adakd, train, dataset, eval and run sections."""
    device, run_dir = plan.device, plan.run_dir
    encoded = encoded_train(cfg.dataset, tokenizer, data, ctx)
    total = total_steps(cfg.train.steps, float(cfg.train.epochs), len(encoded), int(cfg.train.global_batch))
    objective = None
    teacher_model = teacher.model if teacher is not None else None
    if teacher is not None:
        objective = build_objective(cfg.method, cfg.adakd, total_steps=total, impl=cfg.train.loss_impl,
                                    chunk_size=cfg.train.loss_chunk_size, seed=int(cfg.train.seed),
                                    teacher_cache=cfg.train.teacher_cache,
                                    logit_cache_mb=cfg.train.fused_logit_cache_mb,
                                    eos_id=tokenizer.eos_token_id)
    d = distributed.info()
    amp = plan.autocast
    student_vocab = int(lm_parts(student)[1].weight.shape[0])   # before any FSDP wrapping
    student_params = count_params(student)
    if cfg.train.fsdp and d.enabled:
        if objective is not None and list(objective.parameters()):
            raise ValueError("train.fsdp=true with a learnable objective parameter (adakd.temperature=ctkd) "
                             "is not supported; use plain data parallel (train.fsdp=false)")
        student = distributed.wrap_fsdp(student, param_dtype=amp, device=device)
    elif cfg.train.fsdp:
        log.warning("train.fsdp=true ignored: one process (launch with torchrun for FSDP; docs/scale.md)")
    elif d.enabled:
        distributed.broadcast_params(student)   # every replica starts from rank 0's weights, as DDP does
    # one vLLM engine samples the student for the recipe and for dev validation, when either uses vLLM
    student_engine = student_policy_engine(cfg, plan, student, tokenizer)
    batch_source = build_recipe(cfg, plan, student=student, teacher=teacher, tokenizer=tokenizer, data=data, ctx=ctx,
                                student_engine=student_engine) if teacher is not None else None
    if hasattr(batch_source, "train_data"):   # seqkd: the teacher's (cached) responses replace the dataset's
        encoded = batch_source.train_data(encoded)
    teacher_source = teacher_model
    if teacher is not None and cfg.train.teacher_cache.enabled:   # off-policy: the teacher's top-k from disk
        teacher_source = CachedTeacher(topk_cache(cfg, plan, teacher_model, encoded, student_vocab=student_vocab,
                                                  pad_id=tokenizer.pad_token_id))
    steps_per_epoch = None if cfg.train.steps else max(1, math.ceil(len(encoded) / int(cfg.train.global_batch)))
    val = validation_plan(cfg, data, usable_dev(cfg, tokenizer, data, ctx), encoded, total, steps_per_epoch,
                          student_params=student_params, teacher=teacher_model)
    settings = train_settings(cfg.train, total_steps=total, method=cfg.method,
                              telemetry_every=int(cfg.adakd.telemetry_every) if objective is not None else 0,
                              progress=bool(cfg.run.progress), val_steps=frozenset(val.steps), autocast_dtype=amp,
                              world_size=d.world_size, rank=d.rank)
    trainer = Trainer(
        settings, student=student, teacher=teacher_source, train_data=encoded,
        collate=lambda b: collate_train(b, tokenizer.pad_token_id), objective=objective, run_dir=run_dir,
        logger=logger, device=device, batch_source=batch_source, on_step_end=getattr(batch_source, "on_step_end", None),
        validator=validator(cfg, tokenizer, data, ctx, teacher_model, val,
                            engine=student_engine if str(cfg.eval.engine) == "vllm" else None) if val.steps else None,
    )
    return trainer, val


def validation_plan(cfg: DictConfig, data: RunData, dev: list, encoded: list, total: int,
                    steps_per_epoch: Optional[int], *, student_params: int, teacher) -> val_plan.ValPlan:
    """When to validate and on how many dev items (training.val_plan), from estimated costs; logged in one line
    and, over train.val_budget, warned about in one line."""
    t = cfg.train
    if not data.dev:
        return val_plan.ValPlan([], 0, 0, 0.0, t.val_budget, False)
    teacher_params = count_params(teacher) if teacher is not None else 0
    costs = val_plan.estimate_costs(
        total_steps=total, global_batch=int(t.global_batch), train_len=mean_length(encoded), dev_len=mean_length(dev),
        student_params=student_params, teacher_params=teacher_params,
        teacher_in_training=teacher is not None and not t.teacher_cache.enabled,
        teacher_in_validation=validation_divergence(cfg.method, teacher) is not None,
        max_new_tokens=int(cfg.eval.max_new_tokens))
    plan = val_plan.plan(costs, total_steps=total, steps_per_epoch=steps_per_epoch, val_every=t.val_every,
                         val_samples=t.val_samples, val_examples=t.val_examples, dev_prompts=len(data.dev),
                         dev_sequences=len(dev), budget=t.val_budget, need_rouge=t.select == "best_dev")
    line = val_plan.describe(plan, max_new_tokens=int(cfg.eval.max_new_tokens))
    if plan.over_budget:
        log.warning("%s: over budget; lower train.val_every, train.val_samples or train.val_examples "
                    "(train.val_every=0 turns validation off)", line)
    elif plan.steps:
        log.info("%s", line)
    return plan


def mean_length(encoded) -> float:
    return sum(len(e["input_ids"]) for e in encoded) / len(encoded) if encoded else 0.0


def validation_divergence(method: DictConfig, teacher):
    """The method's plain base divergence for val_kd (None: SFT, or a method without a divergence)."""
    if teacher is None or method.divergence in (None, "none"):
        return None
    return build_divergence(str(method.divergence), **dict(method.get("params") or {}))


def validator(cfg: DictConfig, tokenizer, data: RunData, ctx: Context, teacher, plan: val_plan.ValPlan,
              engine=None) -> Validator:
    """Dev validation: CE and the plain base divergence on the first plan.examples dev sequences, ROUGE-L of
    generations on the first plan.samples dev prompts, sampled as the evaluation protocol samples (its first
    seed, its prompt format)."""
    e = cfg.eval
    generation = {k: e[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "no_repeat_ngram_size",
                                    "batch_size", "max_prompt_len", "prompt_truncation", "chat_template")}
    return Validator(encoded=usable_dev(cfg, tokenizer, data, ctx)[:plan.examples],
                     examples=list(data.dev[:plan.samples]),
                     tokenizer=tokenizer, teacher=teacher, divergence=validation_divergence(cfg.method, teacher),
                     generation=generation,
                     seed=int(e.seeds[0]), batch_size=int(cfg.train.micro_batch),
                     chunk_size=int(cfg.train.loss_chunk_size), engine=engine)


def topk_cache(cfg: DictConfig, plan: JobPlan, teacher, examples, *, student_vocab: int,
               pad_id: int) -> TeacherCache:
    """The top-k cache of (teacher, these training sequences, k): built by rank 0 if missing, then opened."""
    tc = cfg.train.teacher_cache
    if cfg.method.divergence in TAIL_SENSITIVE and str(tc.form) == "buckets":
        log.warning("train.teacher_cache.form=buckets with method.divergence=%s: this divergence depends on the "
                    "teacher's probability of every token the student puts mass on; buckets merge the teacher's "
                    "tail into one, so while the student is far from the teacher its loss and gradient are far "
                    "off. Use form=dense (the default), a larger k, or the live teacher (docs/recipes.md)",
                    cfg.method.divergence)
    teacher_vocab = int(lm_parts(teacher)[1].weight.shape[0])
    vocab = shared_vocab(student_vocab, teacher_vocab)
    k = min(int(tc.k), vocab - 1)
    if k != int(tc.k):
        log.warning("train.teacher_cache.k=%d >= the vocabulary (%d): using k=%d", tc.k, vocab, k)
    key = plan.teacher_key
    path = plan.caches.topk / cache_key(key, examples, k, vocab)
    if not (path / "meta.json").exists() and distributed.info().is_main:
        with build_lock(path, "top-k teacher cache"):   # another command may be building the same cache
            if not (path / "meta.json").exists():
                build_topk(teacher, examples, path, k=k, vocab=vocab, pad_id=pad_id,
                           device=next(teacher.parameters()).device, batch_size=int(cfg.train.micro_batch),
                           chunk_size=int(cfg.train.loss_chunk_size), autocast_dtype=plan.autocast,
                           progress=bool(cfg.run.progress), extra_meta={"teacher": key})
    distributed.barrier()
    cache = TeacherCache(path)
    log.info("teacher cache %s: %d sequences, %d tokens, k=%d, %.1f MB", path, len(cache), cache.n_tokens, cache.k,
             cache.disk_bytes / 2 ** 20)
    return cache
