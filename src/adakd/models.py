"""Teacher / student loading: hub ids or local directories, models from a config, tokenizers.

Everything that knows about transformers' model classes lives here, so the loop and the objective see
only `(base_model, lm_head)` pairs and tokenizers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"


class ModelLoadError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- tokenizers
def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE trained on `texts`: encodes any text, needs no download, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                 unk_token=None, clean_up_tokenization_spaces=False)
    _save_dir_atomically(Path(out_dir), hf.save_pretrained)   # a kill never leaves a half-written cache
    return hf


def _save_dir_atomically(out_dir: Path, write) -> None:
    """write(tmp_dir) into a temp dir beside out_dir, then rename it into place."""
    import shutil
    import tempfile

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        write(str(tmp))
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_local_or_hub(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Decoder-only models often ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_fingerprint(tok) -> str:
    """Identity of a tokenizer's vocabulary: the same string <=> the same token ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Token-level KD needs one vocabulary: refuse different tokenizers with a clear message."""
    a, b = tokenizer_fingerprint(teacher_tok), tokenizer_fingerprint(student_tok)
    if a != b:
        raise ModelLoadError(
            "teacher and student use different tokenizers (vocab fingerprints "
            f"{a} vs {b}); token-level distillation needs the same vocabulary. "
            "Pick a pair from one model family (conf/model/)."
        )


# --------------------------------------------------------------------------------------------------- models
def _check_local_or_hub(path: str) -> None:
    """A path that looks local must exist: fail before transformers spends a minute on hub retries."""
    looks_local = path.startswith(("/", "./", "../", "~")) or os.sep in path and path.count("/") > 1
    if looks_local and not Path(os.path.expanduser(path)).exists():
        raise ModelLoadError(f"model directory not found: {path} (relative paths start in the current "
                             "directory; a model made by `make models` / adakd-prepare: run that first)")
    if not looks_local and not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: %s must be in the local hub cache", path)


def model_from_arch(arch: Mapping[str, Any], vocab_size: int, seed: int, eos_id: int) -> nn.Module:
    """A GPT-2-style model from a few config fields, randomly initialised with its own seed."""
    from transformers import GPT2Config, GPT2LMHeadModel

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
    from transformers import AutoModelForCausalLM

    _check_local_or_hub(path)
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


def save_model(model: nn.Module, tokenizer, out_dir: Path, extra: Optional[dict] = None) -> None:
    """safetensors weights + config + tokenizer + adakd_model.json (sha256), written atomically."""
    def write(tmp: str) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        info = dict(extra or {})
        if weights.exists():
            info["sha256"] = file_sha256(weights)
        (Path(tmp) / "adakd_model.json").write_text(json.dumps(info, indent=2, default=str))

    _save_dir_atomically(Path(out_dir), write)


def verify_checksum(model_dir: Path) -> None:
    """Refuse a model directory whose weights do not match the checksum recorded when it was written."""
    info_path = Path(model_dir) / "adakd_model.json"
    weights = Path(model_dir) / "model.safetensors"
    if not info_path.exists() or not weights.exists():
        return
    expected = json.loads(info_path.read_text()).get("sha256")
    if expected and file_sha256(weights) != expected:
        raise ModelLoadError(f"checksum mismatch for {weights}: the file is corrupt or was changed; "
                             "delete the directory to rebuild it")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
