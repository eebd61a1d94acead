"""Teacher / student models: hub ids or local directories, GPT-2s from a few config fields, and the
(body, LM head) split the training loop uses so logits are computed only where they are needed.

Everything that knows about transformers' model classes lives in this package, so the loop and the objective
see only `(body, lm_head)` pairs and tokenizers.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Tuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from ..errors import ModelLoadError

log = logging.getLogger(__name__)


HUB_PROBE_TIMEOUT = 10.0   # seconds: an unreachable hub fails in seconds, not after a minute of retries


def check_local_or_hub(path: str) -> None:
    """A path that looks local must exist, and a hub id needs a reachable hub (or HF_HUB_OFFLINE=1 and the
    local hub cache): fail before transformers spends a minute or two on retries."""
    looks_local = path.startswith(("/", "./", "../", "~")) or os.sep in path and path.count("/") > 1
    if looks_local and not Path(path).exists():
        raise ModelLoadError(f"model directory not found: {path} (relative paths start in the current "
                             "directory; a model made by `make models` / adakd-prepare: run that first)")
    if looks_local or Path(path).exists():
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        log.info("HF_HUB_OFFLINE=1: %s must be in the local hub cache", path)
        return
    problem = _hub_unreachable(path)
    if problem:
        from huggingface_hub import try_to_load_from_cache   # as in _hub_unreachable
        cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
        raise ModelLoadError(f"the Hugging Face hub did not answer within {HUB_PROBE_TIMEOUT:.0f} s for {path} "
                             f"({problem}): check the network, or set HF_HUB_OFFLINE=1 to load {path} from the "
                             "local hub cache " + ("(it is there)" if cached else "(it is not there: download "
                                                   "it first, or give a local directory)"))


@functools.lru_cache(maxsize=None)
def _hub_unreachable(repo_id: str) -> str:
    """'' when the hub answers about repo_id (any HTTP answer counts: a private or missing repo is the loader's
    message to give), else what failed. One short request per id and process."""
    from huggingface_hub import HfApi   # loaded only for hub ids (slow import)
    from huggingface_hub.errors import HfHubHTTPError   # as above
    try:
        HfApi().model_info(repo_id, timeout=HUB_PROBE_TIMEOUT)
    except HfHubHTTPError:
        return ""
    except Exception as e:   # noqa: BLE001 - connection, DNS, proxy, timeout: whatever the HTTP stack raises
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return ""


def check_model_dir(path: str) -> None:
    """A local model directory, checked before loading, with one message: a readable config.json, weights as
    safetensors (pickle files are never loaded: they can run code) and each safetensors file complete."""
    d = Path(path)
    if not d.is_dir():
        return   # a hub id (or a missing path: check_local_or_hub's message)
    config = d / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{d} holds no config.json: not a model directory "
                             f"({'empty' if not any(d.iterdir()) else 'files: ' + ', '.join(_names(d))})")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{config} is unreadable or malformed ({e}): restore or re-download the model") from None
    shards = sorted(d.glob("*.safetensors"))
    if not shards:
        pickles = [n for n in _names(d) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ModelLoadError(f"{d} has no .safetensors weights" + (
            f", only pickle files ({', '.join(pickles)}), which adakd never loads (unpickling can run code): "
            "convert them to safetensors" if pickles else ""))
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            raise ModelLoadError(f"{shard} is incomplete or corrupt ({problem}): re-download or rebuild the model")


def _names(d: Path) -> list:
    return sorted(p.name for p in d.iterdir())[:8]


def _safetensors_problem(path: Path) -> str:
    """'' when the file holds its whole header and every tensor the header lists, else what is wrong. A
    safetensors file is an 8-byte little-endian header size, a JSON header with each tensor's byte range, the data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or 8 + n > size:
                return f"{size} bytes, shorter than its header"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"unreadable header: {type(e).__name__}"
    if 8 + n + end > size:
        return f"{size} bytes, its header lists {8 + n + end}"
    return ""


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
    check_model_dir(path)
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
