"""The student: built from its spec (model.student: from scratch, pretrained, or pruned from the teacher),
prepared for training (checkpointing, LoRA), and exported after training as a plain model."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..models import count_params
from .construct import build_model, plain_model, prepare_for_training


def get_student(spec, tokenizer, device, *, teacher: Optional[torch.nn.Module] = None, for_training: bool = False,
                sharded: bool = False) -> Tuple[torch.nn.Module, Dict]:
    """`teacher`: the model a pruned student is cut from. `sharded`: the student is trained under FSDP, whose
    wrapping moves the shards to the device."""
    model = build_model(spec, tokenizer, teacher=teacher, device=device)
    model = prepare_for_training(model, spec)
    if not (for_training and sharded):
        model.to(device)
    info = {"student": spec.path or spec.source, "params": count_params(model)}
    if spec.source == "pruned":
        info["pruned_from"] = getattr(model.config, "adakd_pruned_from", None)
    return model, info


def export_student(spec, trainer, student, tokenizer, device, *, teacher: Optional[torch.nn.Module] = None):
    """The trained student for saving and evaluation (None on ranks other than 0 under FSDP). `teacher`: the
    model a pruned student was cut from (its shape is rebuilt to gather FSDP shards into)."""
    model = plain_model(trainer, student, lambda: build_model(spec, tokenizer, teacher=teacher, device=device), spec)
    if model is not None:
        model.to(device)
    return model
