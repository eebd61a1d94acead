"""Where a method helps or hurts, read from finished runs: per-token telemetry by place in the answer, the answers
themselves, and the student's probability of ending its answer.

    python -m adakd.experiment.diagnose tokens  RUN_DIR [RUN_DIR ...]
    python -m adakd.experiment.diagnose answers RUN_DIR [RUN_DIR ...] [--benchmarks world-test world-longctx]
    python -m adakd.experiment.diagnose paired  RUN_A RUN_B [--benchmarks ...]
    python -m adakd.experiment.diagnose eos     RUN_DIR [RUN_DIR ...] [--benchmarks ...]
    python -m adakd.experiment.diagnose engines RUN_A RUN_B

- `tokens`: the telemetry rows (adakd.telemetry_every) grouped by place: the end-of-answer token (the last
  response token, whose target is EOS), the first response tokens (positions 0-2) and the rest. For each: the
  share LATF kept, the mean difficulty, the mean IDTS temperature of the kept tokens, the mean gradient norm of
  each kept term at its temperature and at tau = 1, and the place's share of the step's gradient (sum of norms).
- `answers`: per benchmark, ROUGE-L, the share of near-empty answers (under NEAR_EMPTY characters) and the mean
  answer length, over every (prompt, generation seed) of the predictions files.
- `paired`: ROUGE-L of two runs over the (prompt, seed) pairs where both answers are at least NEAR_EMPTY
  characters long: whether a difference survives setting the near-empty answers aside.
- `eos`: teacher-forced on each prompt's first reference, the model's probability of ending the answer at the
  first response positions, in the middle and at the reference's end.
- `engines`: two runs of one job evaluated by two engines (eval.engine=native and vllm, the same eval.seeds):
  per row (the baselines and the run), the Avg over the benchmarks, mean +- sd over the generation seeds, the
  difference B - A, its standard error from the two spreads, and whether it is within A's spread.
Everything is printed as markdown tables; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from omegaconf import OmegaConf

from ..data.prompts import tokenize_pair
from ..evaluation.generation import encode_prompts
from ..models.loading import load_pretrained
from ..models.tokenizers import load_tokenizer
from .table_stats import bench_seeds, mean_std, seed_avgs

NEAR_EMPTY = 10        # characters: an answer shorter than this is "near-empty" (docs/reproducing.md)
FIRST = 3              # the first response tokens: positions 0 .. FIRST-1
PLACES = ("end", "first", "rest")


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _place(position: int, to_end: int) -> str:
    if to_end == 0:
        return "end"
    return "first" if position < FIRST else "rest"


# ------------------------------------------------------------------------------------------ telemetry
def telemetry_rows(run_dir: Path) -> List[dict]:
    path = Path(run_dir) / "telemetry.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no telemetry (a KD run writes it every adakd.telemetry_every steps)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    placed = [r for r in rows if "position" in r and len(r["position"]) == len(r.get("kept", []))]
    if not placed:
        raise ValueError(f"{path}: its rows have no per-token places (written before the telemetry had them, or "
                         "sampled down: more response tokens per step than the telemetry keeps)")
    return placed


def tokens_by_place(run_dir: Path) -> Dict[str, Dict[str, float]]:
    """{place: {n, kept, difficulty, tau, grad, grad_t1, grad_share}} pooled over the run's telemetry rows."""
    acc: Dict[str, Dict[str, List[float]]] = {p: {k: [] for k in ("kept", "difficulty", "tau", "grad", "grad_t1")}
                                             for p in PLACES}
    for r in telemetry_rows(run_dir):
        kept_j = 0
        for i, (pos, to_end) in enumerate(zip(r["position"], r["to_end"])):
            a = acc[_place(int(pos), int(to_end))]
            kept = bool(r["kept"][i])
            a["kept"].append(float(kept))
            a["difficulty"].append(r["difficulty"][i])
            if kept:   # the kept tokens' tensors are in position order (pipeline.select_tokens)
                a["tau"].append(r["tau"][kept_j])
                if "grad_norm" in r:
                    a["grad"].append(r["grad_norm"][kept_j])
                    a["grad_t1"].append(r["grad_norm_t1"][kept_j])
                kept_j += 1
    total = sum(sum(acc[p]["grad"]) for p in PLACES) or float("nan")
    return {p: {"n": float(len(a["kept"])), "kept": _mean(a["kept"]), "difficulty": _mean(a["difficulty"]),
                "tau": _mean(a["tau"]), "grad": _mean(a["grad"]), "grad_t1": _mean(a["grad_t1"]),
                "grad_share": sum(a["grad"]) / total}
            for p, a in acc.items()}


# ------------------------------------------------------------------------------------------ answers
def predictions(run_dir: Path, benchmark: str) -> Dict[tuple, dict]:
    path = Path(run_dir) / "predictions" / f"{benchmark}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no predictions for {benchmark}")
    return {(r["id"], r["seed"]): r for r in map(json.loads, path.read_text().splitlines()) if r}


def answer_stats(run_dir: Path, benchmark: str) -> Dict[str, float]:
    preds = list(predictions(run_dir, benchmark).values())
    lengths = [len(p["prediction"].strip()) for p in preds]
    return {"rougeL": _mean([p["rougeL"] for p in preds]),
            "near_empty": _mean([float(n < NEAR_EMPTY) for n in lengths]), "length": _mean(lengths)}


def paired_completed(run_a: Path, run_b: Path, benchmark: str) -> Dict[str, float]:
    a, b = predictions(run_a, benchmark), predictions(run_b, benchmark)
    both = [k for k in a if k in b and len(a[k]["prediction"].strip()) >= NEAR_EMPTY
            and len(b[k]["prediction"].strip()) >= NEAR_EMPTY]
    return {"n": float(len(both)), "of": float(len(set(a) & set(b))),
            "a": _mean([a[k]["rougeL"] for k in both]), "b": _mean([b[k]["rougeL"] for k in both])}


# ------------------------------------------------------------------------------------------ ending the answer
def eos_probabilities(run_dir: Path, benchmark: str, *, max_prompts: Optional[int] = None) -> Dict[str, float]:
    """Teacher-forced on (prompt, first reference): mean P(EOS) at response positions 0, 1, 2, in the middle
    (every position from 3 to the last but one) and at the reference's end (where EOS is the target)."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model_dir = str(run_dir / "model")
    tok, model = load_tokenizer(model_dir), load_pretrained(model_dir).eval()
    eos = tok.eos_token_id
    seen, buckets = set(), {"p0": [], "p1": [], "p2": [], "middle": [], "end": []}
    for r in predictions(run_dir, benchmark).values():
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        if max_prompts is not None and len(seen) > max_prompts:
            break
        prompt_ids = encode_prompts(tok, [r["prompt"]], int(cfg.eval.max_prompt_len), str(cfg.eval.prompt_truncation),
                                    not bool(cfg.eval.chat_template))[0]
        response = tokenize_pair(tok, r["prompt"], r["references"][0])[1] + [eos]
        ids = torch.tensor([prompt_ids + response])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        p_end = torch.softmax(logits, -1)[:, eos].tolist()   # p_end[j]: P(EOS) where response token j is next
        for j, p in enumerate(p_end):
            if j == len(p_end) - 1:
                buckets["end"].append(p)
            elif j < 3:
                buckets[f"p{j}"].append(p)
            else:
                buckets["middle"].append(p)
    return {k: _mean(v) for k, v in buckets.items()}


# ------------------------------------------------------------------------------------------ engines
def row_seed_avgs(metrics: dict) -> Dict[str, List[float]]:
    """Per row of a metrics.json (its baselines, then the run itself): the Avg over the benchmarks at each
    generation seed (experiment.table_stats, as the tables compute it)."""
    def per_seed(rouge: dict) -> List[float]:
        parts = [bench_seeds(v) for v in rouge.values()]
        counts = {len(p) for p in parts}
        if len(counts) != 1:
            raise ValueError(f"benchmarks with different numbers of seeds: {sorted(counts)}")
        return seed_avgs(parts)
    rows = {name: per_seed(b["rougeL"]) for name, b in metrics.get("baselines", {}).items()}
    rows[str(metrics["run"].get("name", "run"))] = per_seed(metrics["rougeL"])
    return rows


def engine_agreement(run_a: Path, run_b: Path) -> List[dict]:
    """Row by row: A's and B's seed-mean Avg and spread, B - A and its standard error."""
    ma, mb = (json.loads((Path(r) / "metrics.json").read_text()) for r in (run_a, run_b))
    if ma["protocol"]["seeds"] != mb["protocol"]["seeds"]:
        raise ValueError(f"the runs were evaluated at other generation seeds: {ma['protocol']['seeds']} and "
                         f"{mb['protocol']['seeds']}")
    a, b = row_seed_avgs(ma), row_seed_avgs(mb)
    out = []
    for name in a:
        if name not in b:
            continue
        xa, xb = a[name], b[name]
        (mean_a, sa), (mean_b, sb) = mean_std(xa), mean_std(xb)
        if len(xa) < 2:
            sa = sb = float("nan")
        diff = mean_b - mean_a
        out.append({"row": name, "a": mean_a, "sd_a": sa, "b": mean_b, "sd_b": sb, "diff": diff,
                    "se": (sa ** 2 / len(xa) + sb ** 2 / len(xb)) ** 0.5, "seeds": len(xa),
                    "within": abs(diff) <= sa})
    return out


# ------------------------------------------------------------------------------------------ printing
def _label(run_dir: Path) -> str:
    return Path(run_dir).name


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float, digits: int = 3) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adakd.experiment.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("tokens", "answers", "paired", "eos", "engines"))
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (outputs/runs/<name>-<hash>)")
    ap.add_argument("--benchmarks", nargs="+", default=["world-test", "world-longctx"])
    ap.add_argument("--max-prompts", type=int, default=None, help="eos: the first n prompts of each benchmark")
    args = ap.parse_args(argv)
    if args.what == "tokens":
        rows = []
        for run in args.runs:
            for place, s in tokens_by_place(run).items():
                rows.append([_label(run), place, f"{int(s['n'])}", _f(s["kept"], 2), _f(s["difficulty"]),
                             _f(s["tau"]), _f(s["grad"]), _f(s["grad_t1"]), _f(s["grad_share"], 2)])
        print(_table(["run", "place", "tokens", "kept by LATF", "difficulty", "tau (kept)", "|grad| at tau",
                      "|grad| at tau=1", "share of |grad|"], rows))
    elif args.what == "answers":
        rows = [[_label(run), b, _f(s["rougeL"], 2), _f(100 * s["near_empty"], 1), _f(s["length"], 1)]
                for run in args.runs for b in args.benchmarks for s in [answer_stats(run, b)]]
        print(_table(["run", "benchmark", "ROUGE-L", "near-empty %", "mean length (chars)"], rows))
    elif args.what == "paired":
        if len(args.runs) != 2:
            ap.error("paired takes two run directories")
        a, b = args.runs
        rows = [[b_, f"{int(s['n'])} of {int(s['of'])}", _f(s["a"], 2), _f(s["b"], 2), _f(s["b"] - s["a"], 2)]
                for b_ in args.benchmarks for s in [paired_completed(a, b, b_)]]
        print(f"A = {_label(a)}, B = {_label(b)}; answers of at least {NEAR_EMPTY} characters in both")
        print(_table(["benchmark", "pairs kept", "ROUGE-L A", "ROUGE-L B", "B - A"], rows))
    elif args.what == "engines":
        if len(args.runs) != 2:
            ap.error("engines takes two run directories")
        a, b = args.runs
        agreement = engine_agreement(a, b)
        rows = [[r["row"], f"{r['a']:.2f} ± {_f(r['sd_a'], 2)}", f"{r['b']:.2f} ± {_f(r['sd_b'], 2)}",
                 f"{r['diff']:+.2f}", f"{_f(r['se'], 2)} ({r['diff'] / r['se']:+.1f} SE)" if r["se"] > 0 else "–",
                 "yes" if r["within"] else "no"] for r in agreement]
        seeds = agreement[0]["seeds"] if agreement else 0
        print(f"A = {_label(a)}, B = {_label(b)}; Avg over the benchmarks, mean ± sd over {seeds} generation seeds")
        print(_table(["row", "A", "B", "B - A", "SE of B - A", "within A's sd"], rows))
    else:
        rows = [[_label(run), b] + [_f(s[k], 4) for k in ("p0", "p1", "p2", "middle", "end")]
                for run in args.runs for b in args.benchmarks
                for s in [eos_probabilities(run, b, max_prompts=args.max_prompts)]]
        print(_table(["run", "benchmark", "P(EOS) pos 0", "pos 1", "pos 2", "middle", "at the end"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
