"""LoRA through peft: the paper's 7B -> 1.5B/3B rows train LoRA students.

`model.student.lora: {r: 16, alpha: 32, dropout: 0.05}` wraps the student (`target_modules` defaults to
peft's per-architecture choice: q_proj/v_proj for Llama and Qwen2, c_attn for GPT-2); only the adapter
weights train. `model.teacher.lora` applies to the teacher's fine-tuning stage: the adapters are merged
into the weights before the fine-tuned teacher is cached, so distillation sees a plain model.
`adakd.models.lm_parts` finds body and head through the peft wrapper, so the training loop is unchanged.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping

from torch import nn

log = logging.getLogger(__name__)

# our key -> peft LoraConfig field
KEYS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
        "bias": "bias", "modules_to_save": "modules_to_save", "use_rslora": "use_rslora",
        "init_lora_weights": "init_lora_weights", "layers_to_transform": "layers_to_transform"}


def lora_config(cfg: Mapping[str, Any], model: nn.Module):
    from peft import LoraConfig, TaskType   # heavy to import (~2 s): loaded only where LoRA is used

    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown LoRA setting(s) {unknown}; valid: {sorted(KEYS)}")
    kwargs: Dict[str, Any] = {KEYS[k]: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()
                              if v is not None}
    kwargs.setdefault("r", 16)
    kwargs.setdefault("lora_alpha", 2 * int(kwargs["r"]))
    kwargs.setdefault("lora_dropout", 0.0)
    if getattr(getattr(model, "config", None), "model_type", None) == "gpt2":
        kwargs.setdefault("fan_in_fan_out", True)   # GPT-2's Conv1D stores weights transposed
    return LoraConfig(task_type=TaskType.CAUSAL_LM, **kwargs)


def apply_lora(model: nn.Module, cfg: Mapping[str, Any]) -> nn.Module:
    """The model wrapped by peft with LoRA adapters; every other weight frozen."""
    from peft import get_peft_model   # heavy, as above

    peft_model = get_peft_model(model, lora_config(cfg, model))
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA: %d trainable of %d parameters (%.3f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))
    return peft_model


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel   # heavy, as above
    except ImportError:   # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged(model: nn.Module) -> nn.Module:
    """A plain transformers model with the adapters folded into the weights (in place); others unchanged."""
    if not is_peft(model):
        return model
    return model.merge_and_unload()
