"""Structured config of the `eval` group (the MiniLLM-lineage evaluation protocol)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

ENGINES = ("native", "vllm")


@dataclass
class VLLMConfig:
    """The vLLM engine's settings (eval.engine=vllm; docs/generation.md). They shape the numbers a vLLM run
    computes (dtype) or only where and how fast (the rest); all of it is part of a vLLM run's identity."""
    # "auto": float32 on a CPU (the native sampler's dtype there), the checkpoint's own dtype on a GPU.
    dtype: str = "auto"
    # KV cache for the CPU build, GiB (VLLM_CPU_KVCACHE_SPACE); on a GPU the share of its memory vLLM may take.
    cpu_kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.5
    # Most sequences the engine batches at once (its continuous batching picks them from all requests).
    max_num_seqs: int = 256
    # Requests handed to the engine per call; null: all of a benchmark's (every example at every seed) at once.
    requests_per_call: Optional[int] = None
    # Fixed-shape CUDA graphs cost start-up time and do not pay at this scale: eager by default.
    enforce_eager: bool = True


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
    # Who generates: "native" (the project's batched sampler, the reference) or "vllm" (paged attention and
    # continuous batching; `make install-vllm`). Also the engine of dev validation and of the recipes' samples.
    engine: str = "native"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
