"""Tokenizers: a byte-level BPE trained offline for the synthetic tasks, loading any other one, and the
check that teacher and student share one vocabulary (token-level KD needs it)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional, Tuple

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .loading import ModelLoadError, check_local_or_hub
from .storage import save_dir_atomically

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE trained on `texts`: encodes any text, needs no download, deterministic."""
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
    save_dir_atomically(Path(out_dir), hf.save_pretrained)   # a kill never leaves a half-written cache
    return hf


def load_tokenizer(path: str, trust_remote_code: bool = False):
    check_local_or_hub(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Decoder-only models often ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_fingerprint(tok) -> str:
    """Identity of a tokenizer's vocabulary: the same string <=> the same token ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def first_differing_id(a, b) -> Optional[Tuple[int, Optional[str], Optional[str]]]:
    """(id, token in a, token in b) of the first id the two tokenizers both have and map to different tokens;
    None when they agree on every shared id (one may then have extra ids past the other's end)."""
    ta = {i: t for t, i in a.get_vocab().items()}
    tb = {i: t for t, i in b.get_vocab().items()}
    for i in sorted(set(ta) & set(tb)):
        if ta[i] != tb[i]:
            return i, ta[i], tb[i]
    return None


def check_same_tokenizer(run_tok, own_tok, run_name: str = "the run's tokenizer", own_name: str = "the model") -> None:
    """Token-level KD needs one vocabulary: two tokenizers must agree on every id they share (a larger one may
    only add ids past the other's end, like embedding padding); otherwise a refusal naming both and the id."""
    diff = first_differing_id(run_tok, own_tok)
    if diff is not None:
        i, a, b = diff
        raise ModelLoadError(
            f"{own_name} and {run_name} use different tokenizers: token id {i} is {b!r} in the first and {a!r} in "
            "the second (vocabulary fingerprints "
            f"{tokenizer_fingerprint(own_tok)} vs {tokenizer_fingerprint(run_tok)}). Token-level distillation "
            "needs one vocabulary (cross-tokenizer distillation is not supported): pick a pair from one model "
            "family (conf/model/), or a scratch / pruned student that takes the run's tokenizer")
