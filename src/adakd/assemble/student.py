"""The student: built from its spec (from scratch, pretrained, or pruned from the teacher), prepared for
training (checkpointing, LoRA), and exported after training as a plain model."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from omegaconf import DictConfig

from ..models import count_params
from ..training import distributed
from .construct import build_model, plain_model, prepare_for_training
from .context import Context
from .data import run_data
from .teacher import get_teacher


def _teacher_to_prune(cfg: DictConfig, tokenizer, ctx: Context, device):
    if cfg.model.student.source != "pruned":
        return None
    teacher, _ = get_teacher(cfg, tokenizer, run_data(cfg, ctx), ctx, device)
    return teacher


def get_student(cfg: DictConfig, tokenizer, ctx: Context, device, *, for_training: bool = False
                ) -> Tuple[torch.nn.Module, Dict]:
    spec = cfg.model.student
    model = build_model(spec, tokenizer, teacher=_teacher_to_prune(cfg, tokenizer, ctx, device), device=device)
    model = prepare_for_training(model, spec)
    if not (for_training and cfg.train.fsdp and distributed.info().enabled):
        model.to(device)   # with FSDP the shards are moved to the device when the model is wrapped
    info = {"student": spec.path or spec.source, "params": count_params(model)}
    if spec.source == "pruned":
        info["pruned_from"] = getattr(model.config, "adakd_pruned_from", None)
    return model, info


def export_student(cfg: DictConfig, trainer, student, tokenizer, ctx: Context, device):
    """The trained student for saving and evaluation (None on ranks other than 0 under FSDP)."""
    spec = cfg.model.student

    def rebuild():
        return build_model(spec, tokenizer, teacher=_teacher_to_prune(cfg, tokenizer, ctx, device), device=device)
    model = plain_model(trainer, student, rebuild, spec)
    if model is not None:
        model.to(device)
    return model
