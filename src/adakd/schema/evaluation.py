"""Structured config of the `eval` group (the MiniLLM-lineage evaluation protocol)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class EvalConfig:
    benchmarks: List[str] = field(default_factory=lambda: ["synthetic"])
    seeds: List[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 16
    max_samples: Optional[int] = None   # CPU-sized subsets: first N examples of each benchmark
    # Prompts longer than this (tokens) are cut; "head" keeps the first tokens as MiniLLM's
    # evaluation does, "tail" the last ones (keeps the "### Response:" marker).
    max_prompt_len: int = 256
    prompt_truncation: str = "head"
    # Wrap the Alpaca prompt in the model's chat template (user turn); off in the protocol.
    chat_template: bool = False
