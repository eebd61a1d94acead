"""Generated tokens per second: adakd's batched sampler vs transformers' `generate`, one prompt at a time.

    python -m adakd.bench.generate --json [--model DIR] [--n-prompts 32] [--max-new-tokens 256]

Both sides get the same model, the same prompts (Alpaca prompts of dolly/test.jsonl under
$ADAKD_DATA_DIR, else synthetic ones), the same prompt truncation and the protocol's sampling
(top_k 0, top_p 1, temperature 1). Without --model the model is a randomly initialised small GPT-2
with a BPE tokenizer trained on the prompts: its outputs are noise but its cost per token is real.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from adakd.evaluation.generation import encode_prompts, generate_ids

from adakd import models
from adakd.data import load_benchmark, render_prompt


def _prompts(n: int) -> tuple[list[str], list[str], str]:
    root = os.environ.get("ADAKD_DATA_DIR")
    if root and (Path(root) / "dolly" / "test.jsonl").is_file():
        examples = load_benchmark("dolly", root)
        corpus = [ex.prompt for ex in examples] + [r for ex in examples for r in ex.references]
        return [ex.prompt for ex in examples[:n]], corpus, "dolly/test.jsonl"
    words = ["the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "was", "for", "on", "are",
             "with", "as", "his", "they", "be", "at", "one", "have", "this"]
    prompts = [render_prompt(" ".join(words[(i * 7 + k) % len(words)] for k in range(8 + i % 40)) + "?")
               for i in range(n)]
    return prompts, prompts * 4, "synthetic"


def _model_and_tokenizer(args, corpus: list[str]):
    if args.model:
        return models.load_pretrained(args.model), models.load_tokenizer(args.model), {"path": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        tok = models.train_bpe_tokenizer(corpus, args.vocab, Path(tmp))
    arch = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": max(1, args.n_embd // 64),
            "n_positions": 1024}
    model = models.model_from_arch(arch, len(tok), seed=0, eos_id=tok.eos_token_id)
    return model, tok, {"random_init_gpt2": arch, "vocab": len(tok)}


def _count(ids: list[int], eos: int) -> int:
    return ids.index(eos) if eos in ids else len(ids)


@torch.no_grad()
def _hf_one_at_a_time(model, tok, encoded: list[list[int]], max_new_tokens: int, seed: int) -> int:
    torch.manual_seed(seed)
    total = 0
    for ids in encoded:
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        total += _count(out[0, len(ids):].tolist(), tok.eos_token_id)
    return total


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, corpus, source = _prompts(args.n_prompts)
    model, tok, model_info = _model_and_tokenizer(args, corpus)
    model.eval()
    keys = [f"bench:{i}" for i in range(len(prompts))]
    encoded = encode_prompts(tok, prompts, args.max_prompt_len, "head", True)
    common = {"seed": args.seed, "max_new_tokens": args.max_new_tokens, "max_prompt_len": args.max_prompt_len,
                  "progress": False}

    # warm-up: first calls pay for lazy initialisation on both sides
    generate_ids(model, tok, prompts[:2], keys[:2], **{**common, "max_new_tokens": 4})
    _hf_one_at_a_time(model, tok, encoded[:1], 4, args.seed)

    # Timed in alternation, one batch of prompts at a time (longest first, the batches `generate` would
    # form), so that a load change on a shared machine hits both sides alike.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    ours_s = hf_s = 0.0
    ours_tokens = hf_tokens = 0
    for start in range(0, len(order), args.batch_size):
        chunk = order[start:start + args.batch_size]
        t0 = time.perf_counter()
        ids = generate_ids(model, tok, [prompts[i] for i in chunk], [keys[i] for i in chunk],
                           batch_size=args.batch_size, **common)
        tok.batch_decode(ids, skip_special_tokens=True)   # part of what `generate` does
        ours_s += time.perf_counter() - t0
        ours_tokens += sum(len(i) for i in ids)
        t0 = time.perf_counter()
        hf_tokens += _hf_one_at_a_time(model, tok, [encoded[i] for i in chunk], args.max_new_tokens,
                                       args.seed + start)
        hf_s += time.perf_counter() - t0

    ours_tps, hf_tps = ours_tokens / ours_s, hf_tokens / hf_s
    return {
        "benchmark": "generate",
        "model": model_info,
        "prompts": {"n": len(prompts), "source": source,
                    "mean_prompt_tokens": sum(map(len, encoded)) / len(encoded)},
        "settings": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                     "max_prompt_len": args.max_prompt_len, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
                     "seed": args.seed},
        "adakd_batched": {"tokens": ours_tokens, "seconds": round(ours_s, 3),
                          "tokens_per_s": round(ours_tps, 1)},
        "hf_generate_one_at_a_time": {"tokens": hf_tokens, "seconds": round(hf_s, 3),
                                      "tokens_per_s": round(hf_tps, 1)},
        "ratios": {"speedup": round(ours_tps / hf_tps, 2)},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
                or platform.machine(), "device": "cpu"},
    }


def generation_arguments(description: str, threads: int) -> argparse.ArgumentParser:
    """The options of the generation benchmarks (this one and generate_batched)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", help="local model directory (default: random small GPT-2)")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's default)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--vocab", type=int, default=2048)
    return p


def main(argv=None) -> None:
    args = generation_arguments(__doc__.splitlines()[0], threads=0).parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        a, h = res["adakd_batched"], res["hf_generate_one_at_a_time"]
        print(f"adakd batched: {a['tokens_per_s']} tok/s   transformers one at a time: "
              f"{h['tokens_per_s']} tok/s   speedup {res['ratios']['speedup']}x")


if __name__ == "__main__":
    main()
