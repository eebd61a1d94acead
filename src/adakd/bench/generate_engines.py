"""Generated tokens per second of the three engines on one model: adakd's native sampler, transformers' batched
`generate`, and vLLM (every prompt submitted at once); vLLM's start-up reported apart.

    python -m adakd.bench.generate_engines --json --model DIR [--n-prompts 64] [--max-new-tokens 128]
    python -m adakd.bench.generate_engines --json --model builtin:world-teacher

The same prompt token ids (Alpaca prompts of dolly/test.jsonl under $ADAKD_DATA_DIR, else synthetic ones),
the same room (--max-new-tokens), sampling per the protocol (temperature 1, top_k 0, top_p 1) and stop at EOS
on every side. The native sampler and transformers run in the batches the evaluation forms (--batch-size,
longest prompts first); vLLM gets all prompts in one call, as eval.engine=vllm submits a benchmark. Rounds
alternate the engines (native, transformers, vLLM, then again) so that a load change on a shared machine hits
each; tokens/s is summed over the rounds. Needs vLLM (`make install-vllm`); without it the result says
`skipped` with the reason.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from adakd.bench.generate import _prompts, generation_arguments
from adakd.bench.generate_batched import hf_batched
from adakd.assemble.identity import model_path
from adakd.evaluation.generation import encode_prompts, generate_from_ids, max_positions
from adakd.evaluation.vllm_engine import VLLMEngine, build_requests, eos_ids_of, vllm_available
from adakd import models


def run(args) -> dict:
    if not vllm_available():
        return {"benchmark": "generate_engines", "skipped": "vLLM is not installed (make install-vllm)"}
    if not str(args.model).startswith("builtin:") and not (Path(args.model) / "config.json").is_file():
        return {"benchmark": "generate_engines", "skipped": f"no model at {args.model} (make models)"}
    if args.threads:
        torch.set_num_threads(args.threads)
    path = model_path(args.model)
    prompts, _, source = _prompts(args.n_prompts)
    model, tok = models.load_pretrained(path), models.load_tokenizer(path)
    model.eval()
    encoded = encode_prompts(tok, prompts, args.max_prompt_len, "head", True)
    keys = [f"bench:{i}" for i in range(len(encoded))]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    limit = max_positions(model)
    need = args.max_prompt_len + args.max_new_tokens

    t0 = time.perf_counter()
    engine = VLLMEngine(path, eos_ids=eos_ids_of(model, tok), max_model_len=need if limit is None else min(need, limit))
    startup = time.perf_counter() - t0
    # warm-up: lazy initialisation on every side
    generate_from_ids(model, tok, encoded[:2], keys[:2], seed=args.seed, max_new_tokens=4, progress=False)
    hf_batched(model, tok, encoded[:2], 4, args.seed)
    engine.generate(build_requests(encoded[:2], keys[:2], seed=args.seed, max_new_tokens=4, limit=limit),
                    temperature=1.0)

    totals = {side: {"tokens": 0, "seconds": 0.0} for side in ("native", "hf_generate_batched", "vllm")}
    for r in range(args.rounds):
        seed = args.seed + r
        t0 = time.perf_counter()
        n = 0
        for idx in batches:
            out = generate_from_ids(model, tok, [encoded[i] for i in idx], [keys[i] for i in idx], seed=seed,
                                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
            n += sum(map(len, out))
        totals["native"]["seconds"] += time.perf_counter() - t0
        totals["native"]["tokens"] += n
        t0 = time.perf_counter()
        n = sum(hf_batched(model, tok, [encoded[i] for i in idx], args.max_new_tokens, seed + b)
                for b, idx in enumerate(batches))
        totals["hf_generate_batched"]["seconds"] += time.perf_counter() - t0
        totals["hf_generate_batched"]["tokens"] += n
        t0 = time.perf_counter()
        out = engine.generate(build_requests(encoded, keys, seed=seed, max_new_tokens=args.max_new_tokens,
                                             limit=limit), temperature=1.0)
        totals["vllm"]["seconds"] += time.perf_counter() - t0
        totals["vllm"]["tokens"] += sum(map(len, out))
    engine.close()
    tps = {side: t["tokens"] / t["seconds"] for side, t in totals.items()}
    return {
        "benchmark": "generate_engines",
        "model": {"path": str(args.model), "params": sum(p.numel() for p in model.parameters())},
        "prompts": {"n": len(encoded), "source": source, "mean_prompt_tokens": sum(map(len, encoded)) / len(encoded)},
        "settings": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
                     "max_prompt_len": args.max_prompt_len, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
                     "seed": args.seed},
        **{side: {"tokens": t["tokens"], "seconds": round(t["seconds"], 2), "tokens_per_s": round(tps[side], 1)}
           for side, t in totals.items()},
        "vllm_startup_seconds": round(startup, 1),
        "ratios": {"vllm_over_native": round(tps["vllm"] / tps["native"], 2),
                   "vllm_over_hf": round(tps["vllm"] / tps["hf_generate_batched"], 2),
                   "native_over_hf": round(tps["native"] / tps["hf_generate_batched"], 2)},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(), "device": "cpu"},
    }


def parse_args(argv=None):
    p = generation_arguments(__doc__.splitlines()[0], threads=0)
    p.set_defaults(model="builtin:world-teacher", n_prompts=64, max_new_tokens=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="16 prompts, 32 new tokens, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.rounds = min(args.n_prompts, 16), 32, 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    elif "skipped" in res:
        print(f"skipped: {res['skipped']}")
    else:
        print(" ".join(f"{s}: {res[s]['tokens_per_s']} tok/s" for s in ("native", "hf_generate_batched", "vllm")),
              f"(vLLM start-up {res['vllm_startup_seconds']} s); vLLM / native {res['ratios']['vllm_over_native']}x")


if __name__ == "__main__":
    main()
