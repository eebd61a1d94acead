"""Settings of `adakd-judge`, the pairwise LLM-as-judge (adakd.judge; docs/judge.md).

Read from an optional YAML file (`--config`) and `key=value` overrides, merged on these dataclasses by
OmegaConf: a misspelt key or a value of the wrong type fails with the key's name. The API key is never a
setting: only the name of the environment variable that holds it is (so it is never written or logged).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .logger import LoggerConfig


@dataclass
class LocalServerConfig:
    # Used when `model_path` is set: vLLM's OpenAI-compatible server is started on a free 127.0.0.1 port.
    python: Optional[str] = None         # the python of the environment that has vllm (default: this one)
    dtype: str = "auto"                  # --dtype (float32 for vLLM's CPU build)
    max_model_len: Optional[int] = None  # --max-model-len (default: the model's own)
    enforce_eager: bool = False          # --enforce-eager (no CUDA graphs / compilation)
    extra_args: List[str] = field(default_factory=list)   # any other server flags, as given
    env: Dict[str, str] = field(default_factory=dict)     # e.g. {VLLM_CPU_KVCACHE_SPACE: "1"}
    startup_timeout: float = 900.0       # seconds to wait for GET /health before giving up


@dataclass
class JudgeConfig:
    # Where the judge is: an OpenAI-compatible endpoint (base_url, e.g. http://127.0.0.1:8000/v1) ...
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (unset: no Authorization header)
    # ... or a local model directory / hub id served by vLLM for the command's duration (server below).
    model_path: Optional[str] = None
    model: Optional[str] = None          # the model name the server knows (default: model_path's name)
    # Prompt: `pairwise-reference` (the authors' protocol: instruction, ground truth, two answers, brief
    # reasoning, [[A]] / [[B]] / [[C]]), `pairwise` (no ground truth), or a YAML file with `system` and `user`.
    template: str = "pairwise-reference"
    api: str = "completions"             # completions (chat prompt rendered here, as the authors) | chat
    prompt_format: str = "chatml"        # completions only: chatml (Qwen, SmolLM2) | plain
    temperature: float = 0.2
    max_tokens: int = 1024
    seed: Optional[int] = 0              # sent with every request (vLLM: same text for the same prompt and seed)
    concurrency: int = 16
    timeout: float = 120.0               # seconds per request
    retries: int = 3                     # further attempts after a failed request (connection, 5xx, 429, bad body)
    backoff: float = 1.0                 # seconds before the first retry, doubled each time
    max_consecutive_failures: int = 32   # this many failed requests in a row stop the command (0: never)
    # Which pairs: the first N examples of each benchmark (null: all), the benchmarks and generation seeds
    # (empty: all those of run A).
    max_examples: Optional[int] = None
    benchmarks: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)
    # Statistics: percentile bootstrap over examples (an example's seeds resampled together).
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    # Outputs: <output_root>/judge/<name>/ and <output_root>/tables/<name>-judge.{md,csv,png}; the cache of
    # judgments is shared by every comparison (default <output_root>/judge/cache).
    name: Optional[str] = None           # default: <run A>-vs-<run B>
    output_root: str = "outputs"
    cache_dir: Optional[str] = None
    progress: bool = True
    server: LocalServerConfig = field(default_factory=LocalServerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
