"""Generated tokens per second: adakd's batched sampler vs transformers' batched `model.generate`.

    python -m adakd.bench.generate_batched --json [--model DIR] [--n-prompts 32] [--max-new-tokens 256]
    python -m adakd.bench.generate_batched --quick      # a few seconds

The same model, the same prompts (tokenized once), the same batches (the longest-first batches that
`generate_from_ids` forms, `--batch-size` each) and `max_new_tokens` on both sides; sampling per the
protocol (do_sample, top_k 0, top_p 1, temperature 1). transformers gets the batch left-padded with its
attention mask, as its docs prescribe for decoder-only batched generation. Tokens = generated tokens
before the first EOS. The two sides alternate batch by batch (one torch thread by default), so a load
change on a shared machine hits both; the ratio is ours / transformers' tokens per second.
(`adakd.bench.generate` compares with transformers one prompt at a time, the unpadded reference.)
"""

from __future__ import annotations

import json
import platform
import time

import torch

from adakd.bench.generate import _count, _model_and_tokenizer, _prompts, generation_arguments
from adakd.evaluation.generation import encode_prompts, generate_from_ids


@torch.no_grad()
def hf_batched(model, tok, batch: list[list[int]], max_new_tokens: int, seed: int) -> int:
    """transformers' batched sampling of one left-padded batch; returns the tokens before EOS."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                         max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    return sum(_count(row.tolist(), tok.eos_token_id) for row in out[:, width:])


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, corpus, source = _prompts(args.n_prompts)
    model, tok, model_info = _model_and_tokenizer(args, corpus)
    model.eval()
    encoded = encode_prompts(tok, prompts, args.max_prompt_len, "head", True)
    keys = [f"bench:{i}" for i in range(len(encoded))]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # generate_from_ids' batches
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    # warm-up: the first calls pay for lazy initialisation on both sides
    generate_from_ids(model, tok, encoded[:2], keys[:2], seed=args.seed, max_new_tokens=4, progress=False)
    hf_batched(model, tok, encoded[:2], 4, args.seed)

    ours_s = hf_s = 0.0
    ours_tokens = hf_tokens = 0
    for b, idx in enumerate(batches):
        sides = ("ours", "hf") if b % 2 == 0 else ("hf", "ours")  # alternate who goes first
        for side in sides:
            t0 = time.perf_counter()
            if side == "ours":
                out = generate_from_ids(model, tok, [encoded[i] for i in idx], [keys[i] for i in idx],
                                        seed=args.seed, max_new_tokens=args.max_new_tokens,
                                        batch_size=args.batch_size, progress=False)
                ours_s += time.perf_counter() - t0
                ours_tokens += sum(map(len, out))
            else:
                hf_tokens += hf_batched(model, tok, [encoded[i] for i in idx], args.max_new_tokens,
                                        args.seed + b)
                hf_s += time.perf_counter() - t0
    ours_tps, hf_tps = ours_tokens / ours_s, hf_tokens / hf_s
    return {
        "benchmark": "generate_batched",
        "model": model_info,
        "prompts": {"n": len(encoded), "source": source, "mean_prompt_tokens": sum(map(len, encoded)) / len(encoded)},
        "settings": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                     "max_prompt_len": args.max_prompt_len, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
                     "seed": args.seed, "batches": len(batches)},
        "adakd_batched": {"tokens": ours_tokens, "seconds": round(ours_s, 3), "tokens_per_s": round(ours_tps, 1)},
        "hf_generate_batched": {"tokens": hf_tokens, "seconds": round(hf_s, 3), "tokens_per_s": round(hf_tps, 1)},
        "ratios": {"tokens_per_s_adakd_over_hf": round(ours_tps / hf_tps, 3)},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(), "device": "cpu"},
    }


def parse_args(argv=None):
    p = generation_arguments(__doc__.splitlines()[0], threads=1)
    p.add_argument("--quick", action="store_true", help="8 prompts, 32 new tokens, batch 4")
    args = p.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.batch_size = min(args.n_prompts, 8), 32, 4
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        a, h = res["adakd_batched"], res["hf_generate_batched"]
        print(f"adakd batched: {a['tokens_per_s']} tok/s   transformers batched generate: {h['tokens_per_s']} "
              f"tok/s   ratio {res['ratios']['tokens_per_s_adakd_over_hf']}")


if __name__ == "__main__":
    main()
