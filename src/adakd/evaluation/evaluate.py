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
from .generation import encode_prompts, generate
from .rouge import rouge_l_scores

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
    return {
        "generation": {
            "decoding": "greedy" if cfg.temperature <= 0 else "sampling",
            "sampler": "Gumbel-max per example; stream seeded by sha256(seed, example id)",
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
            "repetition_penalty": None,
            "batch_size": cfg.batch_size,
            "batching": "left-padded, sorted by prompt length, KV-cached",
            "stop": "EOS",
        },
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
        "versions": {p: _version(p) for p in ("adakd", "torch", "transformers", "tokenizers", "rouge-score")},
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


def evaluate_model(model: Any, tokenizer: Any, benchmarks: Mapping[str, Sequence[Example]], cfg: EvalConfig,
                   out_dir: str | Path, *, device: str = "cpu", model_info: dict | None = None,
                   data_files: dict | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate and score every benchmark at every seed; write predictions; return the metrics.

    ``benchmarks`` maps a name to its examples (``cfg.benchmarks``, when non-empty, selects and orders
    them; a name in it without examples is an error). ``cfg.max_samples`` keeps the first N examples.
    Predictions go to ``out_dir/predictions/<benchmark>.jsonl``, one line per example and seed.
    ``data_files`` defaults to the provenance the loader put in the examples (path, sha256, n).
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

    n_batches = sum(math.ceil(len(exs) / cfg.batch_size) for exs in selected.values()) * len(cfg.seeds)
    bar = tqdm(total=n_batches, desc="evaluate", disable=not progress)
    results: dict[str, Any] = {}
    try:
        for bench, examples in selected.items():
            prompts = model_prompts(tokenizer, examples, cfg)
            keys = [ex.id or f"{bench}:{i}" for i, ex in enumerate(examples)]
            refs = [ex.references for ex in examples]
            rows, per_seed = [], []
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{bench} seed={seed}")
                preds = generate(model, tokenizer, prompts, keys, seed=seed,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 top_k=cfg.top_k, top_p=cfg.top_p,
                                 no_repeat_ngram_size=cfg.no_repeat_ngram_size, batch_size=cfg.batch_size,
                                 max_prompt_len=cfg.max_prompt_len, prompt_truncation=cfg.prompt_truncation,
                                 add_special_tokens=not cfg.chat_template, progress=False, pbar=bar)
                preds = [p.strip() for p in preds]
                scores = rouge_l_scores(preds, refs)
                per_seed.append(sum(scores) / len(scores))
                rows += [{"id": key, "seed": seed, "prompt": prompt, "prediction": pred, "references": ref,
                          "rougeL": score}
                         for key, prompt, pred, ref, score in zip(keys, prompts, preds, refs, scores)]
            atomic_write_jsonl(Path(out_dir) / "predictions" / f"{bench}.jsonl", rows)
            mean, std = _mean_std(per_seed)
            results[bench] = {"mean": mean, "std": std, "per_seed": per_seed, "n": len(examples)}
    finally:
        bar.close()

    sizes = {b: len(exs) for b, exs in selected.items()}
    return {
        "rougeL": results,
        "avg": sum(r["mean"] for r in results.values()) / len(results),
        "protocol": protocol_record(cfg, model_info=model_info, data_files=data_files, sizes=sizes,
                                    device=str(device)),
    }
