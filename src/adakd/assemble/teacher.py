"""The teacher: a shipped checkpoint built by exactly this recipe, a fine-tuned one from the cache (trained
now if missing: resumable, then reused by every later run), or the model as its spec builds it. Frozen, in
eval mode, in model.teacher.dtype on its device."""
from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.prompts import collate_train
from ..io import build_lock
from ..models import count_params, load_pretrained, save_model, verify_checksum
from ..schema import TrainConfig
from ..tracking import NullLogger
from ..training import distributed
from ..training.loop import Trainer
from ..training.schedule import seed_everything, total_steps
from ..training.settings import train_settings
from .construct import build_model, plain_model, prepare_for_training
from .context import Context
from .data import RunData, encoded_train
from .devices import autocast_dtype, load_dtype, teacher_device
from .identity import asset_dir, finetuned_teacher_dir, teacher_key

log = logging.getLogger(__name__)
FINETUNED = "fine-tuned teacher cache"   # how the build lock's messages name it


@dataclass(frozen=True)
class Teacher:
    """A job's teacher, loaded once (get_teacher): the frozen model and where it came from (source, path or
    cache, recipe key, parameter count)."""
    model: torch.nn.Module
    info: Dict[str, Any]


def shipped_teacher(cfg: DictConfig, key: Optional[str] = None) -> Optional[Path]:
    """The shipped checkpoint (model.teacher_asset), when it was built by exactly this teacher recipe (`key`:
    teacher_key(cfg) where the caller holds it, as a job's plan does)."""
    d = asset_dir(cfg.model.teacher_asset)
    if d is None or not (d / "adakd_model.json").exists():
        return None
    info = json.loads((d / "adakd_model.json").read_text())
    if info.get("recipe_hash") != (key or teacher_key(cfg)):
        log.info("shipped teacher %s was built by another recipe; a teacher will be trained and cached", d)
        return None
    return d


def get_teacher(cfg: DictConfig, tokenizer, data: RunData, ctx: Context, device,
                key: Optional[str] = None) -> Tuple[torch.nn.Module, Dict]:
    """The frozen teacher: the shipped checkpoint of this recipe, the fine-tuned cache (fine-tuned first if
    missing), or the model as configured. `key`: teacher_key(cfg) where the caller holds it (a job's plan)."""
    spec = cfg.model.teacher
    key = key or teacher_key(cfg)
    tdev = teacher_device(spec, device)   # optionally its own device

    def build():
        asset = shipped_teacher(cfg, key)
        if asset is not None:
            verify_checksum(asset)
            return load_pretrained(str(asset)), {"teacher": str(asset), "source": "shipped", "recipe": key}
        if spec.finetune:
            cache = finetuned_teacher_dir(cfg, key)
            if not _finetuned(cache):   # under torchrun ensure_teacher has made it (all ranks together)
                with build_lock(cache, FINETUNED):
                    if not _finetuned(cache):   # another process may have made it while this one waited
                        finetune_teacher(cfg, tokenizer, data, ctx, device, cache, key)
            verify_checksum(cache)
            return load_pretrained(str(cache)), {"teacher": str(cache), "source": "finetuned-cache", "recipe": key}
        model = build_model(spec, tokenizer, device=tdev)
        return model, {"teacher": spec.path or "scratch", "source": spec.source, "recipe": key}

    if spec.lora and not spec.finetune:
        log.warning("model.teacher.lora applies to the teacher's fine-tuning (model.teacher.finetune), which is "
                    "not set: the teacher is used as loaded")
    model, info = ctx.get(f"teacher:{key}", build)
    # Half precision on GPU (model.teacher.dtype), fp32 on CPU.
    model.to(device=tdev, dtype=getattr(torch, load_dtype(spec.dtype, tdev))).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, dict(info, params=count_params(model))


def ensure_teacher(cfg: DictConfig, tokenizer, data: RunData, ctx: Context, device,
                   key: Optional[str] = None) -> None:
    """Fine-tune and cache the teacher now if it is to be fine-tuned and is not cached (all ranks together)."""
    key = key or teacher_key(cfg)
    if not cfg.model.teacher.finetune or shipped_teacher(cfg, key) is not None:
        return
    cache = finetuned_teacher_dir(cfg, key)
    # Rank 0 holds the cache's build lock (another command may be fine-tuning the same teacher) and decides.
    with build_lock(cache, FINETUNED) if distributed.info().is_main else nullcontext():
        if distributed.broadcast_object(not _finetuned(cache)):
            finetune_teacher(cfg, tokenizer, data, ctx, device, cache, key)


def _finetuned(cache: Path) -> bool:
    return (cache / "adakd_model.json").exists()


def finetune_teacher(cfg: DictConfig, tokenizer, data: RunData, ctx: Context, device, out: Path,
                     key: Optional[str] = None) -> None:
    """Supervised fine-tuning of the teacher on the training set; its own work directory keeps checkpoints, so
    a killed fine-tune resumes; the result is cached by recipe (identity.teacher_key)."""
    # Only the recipe in model.teacher.finetune (on top of the defaults) shapes the teacher, so the cache key
    # is complete; where it runs is taken from the current train section.
    ft = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                         {"device": cfg.train.device, "threads": cfg.train.threads}, cfg.model.teacher.finetune)
    spec = cfg.model.teacher
    d = distributed.info()
    # Trained in float32 (autocast gives bf16/fp16 compute on GPU); model.teacher.dtype applies when it is used.
    model = build_model(OmegaConf.merge(spec, {"dtype": "float32"}) if not spec.lora else spec, tokenizer,
                        device=device)
    model = prepare_for_training(model, spec)   # LoRA: merged before caching
    train_model = model
    if cfg.train.fsdp and d.enabled:
        train_model = distributed.wrap_fsdp(model, param_dtype=autocast_dtype(ft.precision, device), device=device)
    else:
        model.to(device)
        if d.enabled:
            distributed.broadcast_params(model)
    work = out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(int(ft.seed))
    encoded = encoded_train(cfg.dataset, tokenizer, data, ctx)
    total = total_steps(ft.steps, float(ft.epochs), len(encoded), int(ft.global_batch))
    method = OmegaConf.create({"name": "teacher-sft", "divergence": "none", "recipe": "sft", "kd_ratio": 0.0})
    log.info("fine-tuning the teacher (%d steps, cached in %s)", total, out)
    settings = train_settings(ft, total_steps=total, method=method, progress=bool(cfg.run.progress),
                              autocast_dtype=autocast_dtype(ft.precision, device), world_size=d.world_size,
                              rank=d.rank)
    trainer = Trainer(settings, student=train_model, teacher=None, train_data=encoded,
                      collate=lambda b: collate_train(b, tokenizer.pad_token_id), objective=None, run_dir=work,
                      logger=NullLogger(), device=device)
    result = trainer.train()
    model = plain_model(trainer, model, lambda: build_model(spec, tokenizer, device=torch.device("cpu")), spec)
    if d.is_main:
        save_model(model, tokenizer, out, extra={"recipe_hash": key or teacher_key(cfg), "steps": result.steps,
                                                 "final_loss": result.final_loss,
                                                 "recipe": OmegaConf.to_container(cfg.model.teacher, resolve=True)})
        shutil.copy(work / "train_log.jsonl", out / "train_log.jsonl")
    distributed.barrier()   # the other ranks load the cached teacher rank 0 has just written
