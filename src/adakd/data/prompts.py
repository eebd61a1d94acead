"""Prompt rendering, tokenisation of (prompt, response) pairs, and the training collate function.

The template strings are the Alpaca ones of the MiniLLM line of work (docs/method.md section 6), byte for
byte: the processed benchmark files carry the same strings in their `prompt` field, and the loader
checks that they agree.

Length limits follow the protocol: prompt <= 256 tokens, prompt + response <= 512. What to do with a
sample over the limits is a setting:

* ``drop`` (default, what MiniLLM's data processing does): the sample is skipped (`None`).
* ``truncate`` (what the released AdaKD code does): keep the prompt's *first* ``max_prompt_len``
  tokens, as MiniLLM's prompt dataset does at evaluation time, then cut the whole sequence
  (prompt + response + EOS) to ``max_len``. A response cut this way loses its EOS, on purpose: the
  model should not learn to stop in the middle of a sentence.
"""
from __future__ import annotations

from typing import Any

import torch

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
IGNORE_INDEX = -100
OVERLONG_POLICIES = ("drop", "truncate")


def render_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt; the variant with an ``### Input:`` block only when ``input`` is non-empty."""
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def apply_chat_template(tokenizer: Any, prompt: str) -> str:
    """Wrap an already rendered Alpaca prompt as the user turn of the model's chat template.

    Off by default (the protocol feeds the raw Alpaca prompt); for chat-tuned models that only answer
    well inside their own template. The result usually starts with the model's BOS token, so tokenise
    it with ``add_special_tokens=False``.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{type(tokenizer).__name__} has no chat template; set chat_template=false")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def tokenize_pair(tokenizer: Any, prompt: str, response: str, *,
                  add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the response as the model sees them in one sequence.

    Tokenising ``prompt + response`` and cutting at the prompt's length (as MiniLLM does) gives the
    response tokens a BPE merge across the boundary would produce; when the prompt's own tokens are
    not a prefix of the joint ones (a merge did cross the boundary), fall back to tokenising the two
    parts separately so that the prompt tokens stay those used at generation time.
    """
    prompt_ids = _ids(tokenizer, prompt, add_special_tokens)
    full_ids = _ids(tokenizer, prompt + response, add_special_tokens)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids):]
    return prompt_ids, _ids(tokenizer, response, False)


def encode_example(tokenizer: Any, prompt: str, response: str, *, max_prompt_len: int = 256,
                   max_len: int = 512, overlong: str = "drop", add_eos: bool = True,
                   add_special_tokens: bool = True) -> dict[str, list[int]] | None:
    """Token ids and token-aligned labels of one training sample, or None when it is dropped.

    ``labels[i]`` is the target *at* position i (same indexing as ``input_ids``): -100 on prompt
    tokens, the token itself on response tokens and the EOS. The trainer does the shift.
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if max_prompt_len <= 0 or max_len <= max_prompt_len:
        raise ValueError(f"need 0 < max_prompt_len < max_len, got {max_prompt_len}, {max_len}")
    prompt_ids, response_ids = tokenize_pair(tokenizer, prompt, response,
                                             add_special_tokens=add_special_tokens)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id; set add_eos=False or give it one")
        response_ids = response_ids + [tokenizer.eos_token_id]

    too_long = len(prompt_ids) > max_prompt_len or len(prompt_ids) + len(response_ids) > max_len
    if too_long and overlong == "drop":
        return None
    prompt_ids = prompt_ids[:max_prompt_len]
    response_ids = response_ids[: max_len - len(prompt_ids)]
    if not response_ids:
        return None   # nothing to learn from
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


def collate_train(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of `encode_example` outputs into tensors; padding gets label -100."""
    if not batch:
        raise ValueError("empty batch")
    width = max(len(b["input_ids"]) for b in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        if len(b["labels"]) != n:
            raise ValueError(f"row {row}: {n} input_ids but {len(b['labels'])} labels")
        input_ids[row, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(b["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
