"""Tiny tokenizer and GPT-2 built in-process for tests (no download, a fraction of a second)."""
from __future__ import annotations

import functools

EOS = "<|endoftext|>"

_WORDS = ["the", "a", "an", "of", "to", "in", "and", "is", "are", "was", "be", "it", "this", "that", "with",
          "for", "on", "as", "by", "at", "from", "instruction", "response", "input", "task", "write",
          "below", "describes", "request", "appropriately", "completes", "paired", "provides", "further",
          "context", "what", "who", "when", "where", "why", "how", "many", "much", "run", "runs", "running",
          "ran", "dog", "cat", "bird", "red", "green", "blue", "one", "two", "three", "four", "five",
          "apple", "banana", "cherry", "yes", "no", "answer", "question", "list", "name", "give", "explain",
          "summarize", "the", "following", "sentence", "paragraph", "text", "word", "words"]


def _corpus() -> list[str]:
    from adakd.data.prompts import render_prompt
    lines = []
    for i in range(300):
        w = [_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(6 + i % 9)]
        lines.append(" ".join(w).capitalize() + ("?" if i % 3 == 0 else "."))
    lines += [render_prompt(lines[i], lines[i + 1] if i % 2 else "") for i in range(0, 40, 2)]
    return lines


@functools.lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE trained on a few hundred sentences; EOS doubles as padding, like GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def tiny_gpt2(vocab_size: int, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_positions: int = 256):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()
