"""One model from one spec (model.teacher / model.student): from scratch, pretrained (hub id, local
directory or `builtin:` asset, checksum verified where adakd wrote it) or pruned from the teacher; and what
wraps it for training (gradient checkpointing, LoRA) and unwraps it after (FSDP shards, LoRA merged)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import OmegaConf

from ..errors import ConfigError, ModelLoadError
from ..models import lm_parts, load_pretrained, model_from_arch, verify_checksum
from ..models.lora import apply_lora, merged
from ..models.pruning import prune_layers
from ..training import distributed
from .devices import load_dtype
from .identity import model_path

SOURCES = ("scratch", "pretrained", "pruned")   # model.<role>.source


def build_model(spec, tokenizer, *, teacher: Optional[torch.nn.Module] = None,
                device: Optional[torch.device] = None) -> torch.nn.Module:
    if spec.source == "scratch":
        if not spec.arch:
            raise ConfigError("model source=scratch needs an `arch` (n_layer, n_embd, n_head, n_positions)")
        return model_from_arch(OmegaConf.to_container(spec.arch, resolve=True), len(tokenizer),
                               spec.init_seed, tokenizer.eos_token_id)
    if spec.source == "pretrained":
        if not spec.path:
            raise ConfigError("model source=pretrained needs `path` (a hub id or a local directory)")
        path = model_path(spec.path)
        if Path(path, "adakd_model.json").is_file():   # written by adakd (a conversion, a run): verify
            verify_checksum(Path(path))
        model = load_pretrained(path, dtype=load_dtype(spec.dtype, device), trust_remote_code=spec.trust_remote_code)
        if tokenizer is not None:
            check_vocab_rows(model, tokenizer, f"the model {spec.path}")
        return model
    if spec.source == "pruned":
        if teacher is None:
            raise ConfigError("student source=pruned needs a teacher to prune")
        # The copy starts in the teacher's dtype (maybe bf16 on GPU); the student trains in its own dtype.
        return prune_layers(teacher, keep_layers=spec.keep_layers, every_k=spec.every_k).to(
            getattr(torch, load_dtype(spec.dtype, device)))
    raise ConfigError(f"unknown model source {spec.source!r}; valid: {list(SOURCES)}")


def check_vocab_rows(model, tokenizer, name: str) -> None:
    """Every id the run's tokenizer gives needs a row in the model's embedding and LM head (rows past the
    tokenizer's end are padding, cut before the loss): fewer rows would be another vocabulary, taken for padding."""
    rows = int(lm_parts(model)[1].weight.shape[0])
    if rows < len(tokenizer):
        raise ModelLoadError(f"{name} has {rows} vocabulary rows but the run's tokenizer has {len(tokenizer)} "
                             "tokens: token-level distillation needs one vocabulary (the model's tokenizer must "
                             "be the run's, model.tokenizer)")


def enable_checkpointing(model) -> None:
    """Recompute each block's activations in backward; non-reentrant, so frozen (LoRA) bases work too."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_training(model, spec):
    """Gradient checkpointing and LoRA adapters, as the spec asks."""
    if spec.gradient_checkpointing:
        enable_checkpointing(model)
    if spec.lora:
        model = apply_lora(model, OmegaConf.to_container(spec.lora, resolve=True))
    return model


def plain_model(trainer, model, rebuild: Callable[[], torch.nn.Module], spec):
    """The trained weights as an ordinary transformers model: FSDP shards gathered (rank 0 gets the model, the
    others None), LoRA adapters merged."""
    if getattr(trainer, "fsdp", False):
        state = distributed.full_state_dict(trainer.student)   # a collective; on CPU, rank 0 only
        if not distributed.info().is_main:
            return None
        model = prepare_for_training(rebuild(), spec)
        prefix = "lm."   # the ResponseLM root (training.distributed.wrap_fsdp)
        model.load_state_dict({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()})
    return merged(model)
