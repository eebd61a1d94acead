"""Teacher / student models: hub ids or local directories, GPT-2s from a few config fields, and the
(body, LM head) split the training loop uses so logits are computed only where they are needed.

Everything that knows about transformers' model classes lives in this package, so the loop and the objective
see only `(body, lm_head)` pairs and tokenizers.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Tuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from ..errors import ModelLoadError

log = logging.getLogger(__name__)


def check_local_or_hub(path: str) -> None:
    """A path that looks local must exist: fail before transformers spends a minute on hub retries."""
    looks_local = path.startswith(("/", "./", "../", "~")) or os.sep in path and path.count("/") > 1
    if looks_local and not Path(os.path.expanduser(path)).exists():
        raise ModelLoadError(f"model directory not found: {path} (relative paths start in the current "
                             "directory; a model made by `make models` / adakd-prepare: run that first)")
    if not looks_local and not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: %s must be in the local hub cache", path)


def model_from_arch(arch: Mapping[str, Any], vocab_size: int, seed: int, eos_id: int) -> nn.Module:
    """A GPT-2-style model from a few config fields, randomly initialised with its own seed."""
    fields = dict(arch)
    kind = fields.pop("type", "gpt2")
    if kind != "gpt2":
        raise ModelLoadError(f"model arch type {kind!r} not supported for source=scratch; valid: ['gpt2']")
    cfg = GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                     **fields)
    # The global RNG is touched by module init; fork it so a model's weights depend on its seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg)


def load_pretrained(path: str, *, dtype: str = "float32", trust_remote_code: bool = False) -> nn.Module:
    check_local_or_hub(path)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True,
    )


def lm_parts(model: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(body that returns hidden states, LM head) of a causal LM, so logits can be computed only where needed."""
    inner = getattr(model, "base_model_model", None) or model   # peft wraps once more
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    body = getattr(inner, inner.base_model_prefix)
    head = inner.get_output_embeddings()
    return body, head


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
