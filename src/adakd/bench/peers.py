"""adakd's KD losses against the libraries a user may already have: TRL, Liger-Kernel, torchtune.

    python -m adakd.bench.peers              # markdown table, then one JSON line with every ratio
    python -m adakd.bench.peers --json       # the JSON object only
    python -m adakd.bench.peers --quick      # small sizes, well under a minute
    pip install -e ".[bench]"                # the peers (liger-kernel, trl, torchtune)

Cases (forward + backward of one KD loss on N tokens x V; the student gets gradients):
  jsd, from hidden states + LM-head weights (generalized JSD, beta 0.5 by default):
    trl_naive        TRL `GKDTrainer.generalized_jsd_loss` on logits materialised from the hidden states
    trl_distill      TRL `DistillationTrainer`'s loss (trl >= 1.12): `_chunked_divergence_loss`, hidden states
                     and LM heads in, [4096 tokens x 32768 vocabulary] fp32 tiles, gradients in its backward
    liger_fused      Liger `LigerFusedLinearJSDLoss` (torch chunked loss, compiled=False, its chunk 1024)
    adakd_fused      adakd `KDObjective` on HiddenStates, fused, AdaKD off
    adakd_fused_adakd   the same with LATF r = 0.75 + IDTS (c = 0.5, Hellinger)
    adakd_reference  adakd's reference implementation (logits materialised; opt-in: --cases)
  fkl, from logits:
    torchtune_chunked   torchtune `ForwardKLWithChunkedOutputLoss` (8 chunks); a cross-entropy: it
                        has no teacher-entropy term, which the value check adds back
    adakd_chunked    adakd chunked forward KL
    torch_full       plain torch forward KL on the full logits (F.kl_div)

Every case runs in its own process (a fresh RSS baseline) on the same inputs, regenerated from one
seed in each process. Peak = RSS growth over the inputs (after a tiny untimed run of the same code)
during the timed forward + backward passes; time = median of --reps runs (2) after one warm-up. The cases
of a group are live processes at once and take turns run by run, so a load change on the shared
machine hits them alike; the heavy naive cases (about 10 GB each at full size) run alone. Ratios are
medians of this run only; the machine is shared and noisy, so read them, not the seconds.

Memory floor: what any fused loss must hold at once, dL/dW [V, H_student] + dL/dhidden [N, H_student] + one
fp32 chunk of logits per role (student, teacher, the gradient w.r.t. the student's), at adakd's chunk
(kd.objective.logit_cache.floor_bytes); every jsd case's peak is also given as a multiple of it.

Value checks: the timed losses agree (jsd with TRL and Liger to 1e-6 relative; torchtune's
cross-entropy minus the teacher entropy == adakd's forward KL), and, on small float64 inputs with
masked tokens and beta = 0.1 (asymmetric, so a p/q swap would show), each peer's value and gradient
match adakd's reference. Beta: in TRL and Liger the mixture is m = beta·p_teacher + (1 - beta)·q_student
and the loss beta·KL(p || m) + (1 - beta)·KL(q || m), method.md's definition, so beta maps as is
(at beta = 0 / 1 both switch to KL(p || q) / KL(q || p), where adakd's JSD is 0; never used here).
A peer that is not installed, or fails to import, is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


import torch

from adakd.kd.objective.logit_cache import floor_bytes

from .peer_cases import (CASES, DEFAULT_CASES, FKL_RTOL, GROUPS, JSD_RTOL, RATIOS, TARGET_SIZE, TARGETS,
                         _tiny, convention_check, leaves, make_inputs, make_step, peer_missing, peer_version,
                         teacher_entropy)
from .worker import MALLOC_ENV, Worker


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class Runner:
    """One case in this process: inputs, a tiny run, the RSS baseline; `run()` = one timed step."""

    def __init__(self, args, case: str):
        self.case, self.group, self.chunk = case, CASES[case].group, args.chunk
        self.x = make_inputs(self.group, args.n, args.v, args.h_student, args.h_teacher, seed=args.seed)
        for leaf in leaves(self.group, self.x):
            leaf.requires_grad_(True)
        self.step = make_step(case, args.beta, args.chunk)
        self._run(_tiny(self.group, self.x))
        gc.collect()
        self.base = _rss_mb()

    def _run(self, x) -> float:
        loss = self.step(x)
        loss.backward()
        for leaf in leaves(self.group, x):
            leaf.grad = None
        return float(loss.detach())

    def run(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        value = self._run(self.x)
        return {"time_s": time.perf_counter() - t0, "loss": value}

    def peak_mb(self) -> float:
        return _rss_mb() - self.base

    def extra(self) -> Dict[str, Any]:
        """After the timed runs: what the value checks need from this process."""
        out: Dict[str, Any] = {}
        if self.case == "torchtune_chunked":
            out["teacher_entropy"] = teacher_entropy(self.x["t"], self.x["labels"])
        if CASES[self.case].peer is not None:
            out["convention"] = convention_check(self.case, self.chunk)
        return out


def serve(args) -> int:
    """Worker: one JSON line per command on stdin (`run`, `peak`, `extra`, `quit`)."""

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        runner = Runner(args, args.worker)
    except ImportError as e:  # a peer that is installed but cannot be imported here
        print(json.dumps({"skipped": f"import failed: {type(e).__name__}: {e}"[:500]}), flush=True)
        return 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            print(json.dumps(runner.run()), flush=True)
        elif cmd == "peak":
            print(json.dumps({"peak_mb": runner.peak_mb()}), flush=True)
        elif cmd == "extra":
            print(json.dumps(runner.extra()), flush=True)
        elif cmd == "quit":
            break
    return 0


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def peer_worker(args, case: str) -> Worker:
    cmd = [sys.executable, "-m", "adakd.bench.peers", "--worker", case]
    for flag in ("n", "v", "h_student", "h_teacher", "chunk", "beta", "threads", "seed"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return Worker(cmd, case)


def run_group(args, cases: List[str]) -> Dict[str, Dict[str, Any]]:
    """Live workers for `cases`, taking turns (order reversed every other round)."""
    results: Dict[str, Dict[str, Any]] = {}
    workers: List[Worker] = []
    try:
        for case in cases:  # started one after the other: only one builds its inputs at a time
            w = peer_worker(args, case)
            try:
                hello = w.ask("")
            except RuntimeError as e:
                w.close()
                results[case] = {"status": "failed", "error": str(e)[-2000:]}
                continue
            if "skipped" in hello:
                w.close()
                results[case] = {"status": "skipped", "reason": hello["skipped"]}
                continue
            workers.append(w)
        times: Dict[str, List[float]] = {w.name: [] for w in workers}
        losses: Dict[str, float] = {}
        for rep in range(args.reps + 1):  # round 0 is the untimed warm-up
            for w in workers if rep % 2 == 0 else workers[::-1]:
                out = w.ask("run")
                losses[w.name] = out["loss"]
                if rep > 0:
                    times[w.name].append(out["time_s"])
        for w in workers:
            peak = w.ask("peak")["peak_mb"]
            results[w.name] = {
                "status": "ok",
                "time_s": statistics.median(times[w.name]),
                "times_s": [round(t, 4) for t in times[w.name]],
                "peak_mb": round(peak, 1),
                "loss": losses[w.name],
                "alternated_with": [c for c in cases if c != w.name and c in times],
                **w.ask("extra"),
            }
    finally:
        for w in workers:
            w.close()
    return results


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 4) if b > 0 else None


def _neighbour_ratio(meas: List[float], base: List[float]) -> float:
    """Median of run-by-run ratios (both sides of a run under the same load)."""
    return round(statistics.median(m / b for m, b in zip(meas, base)), 4)


def ratios(cases: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for name, meas, base in RATIOS:
        a, b = cases.get(meas, {}), cases.get(base, {})
        if a.get("status") != "ok" or b.get("status") != "ok":
            why = [f"{c}: {cases.get(c, {}).get('reason') or cases.get(c, {}).get('status', 'not run')}"
                   for c, r in ((meas, a), (base, b)) if r.get("status") != "ok"]
            out[name] = {"status": "skipped", "reason": "; ".join(why)}
            continue
        paired = base in a["alternated_with"]
        out[name] = {
            "status": "ok",
            "time": _neighbour_ratio(a["times_s"], b["times_s"]) if paired else _ratio(a["time_s"], b["time_s"]),
            "time_alternated": paired,
            "memory": _ratio(a["peak_mb"], b["peak_mb"]),
        }
    return out


def value_checks(cases: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    checks: Dict[str, Dict[str, Any]] = {}

    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(b), 1e-30)

    # jsd: the peer's loss is the compared value itself, so this is plain relative error
    for peer_case, ours, tol, fix in (
        ("trl_naive", "adakd_fused", JSD_RTOL, None),
        ("trl_distill", "adakd_fused", JSD_RTOL, None),
        ("liger_fused", "adakd_fused", JSD_RTOL, None),
        ("torchtune_chunked", "adakd_chunked", FKL_RTOL, "teacher_entropy"),
    ):
        p, o = cases.get(peer_case, {}), cases.get(ours, {})
        if p.get("status") != "ok" or o.get("status") != "ok":
            checks[peer_case] = {"status": "skipped", "reason": p.get("reason") or o.get("reason") or "not run"}
            continue
        value = p["loss"] - (p[fix] if fix else 0.0)
        # relative to the larger of the compared magnitudes (the cross-entropy for torchtune)
        err = abs(value - o["loss"]) / max(abs(p["loss"]), abs(o["loss"]), 1e-30)
        checks[peer_case] = {
            "status": "ok" if err <= tol and p["convention"]["ok"] else "mismatch",
            "peer_loss": p["loss"],
            "peer_loss_compared": value,
            "adakd_loss": o["loss"],
            "rel_err": err,
            "rtol": tol,
            "convention_check": p["convention"],
        }
    for case in ("adakd_reference", "torch_full"):  # adakd's own cases against each other
        ours = "adakd_fused" if case == "adakd_reference" else "adakd_chunked"
        a, b = cases.get(case, {}), cases.get(ours, {})
        if a.get("status") == "ok" and b.get("status") == "ok":
            err = rel(a["loss"], b["loss"])
            checks[case] = {"status": "ok" if err <= 1e-5 else "mismatch", "rel_err": err, "rtol": 1e-5}
    return checks


def floor(args, cases: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The fused loss's memory floor at these sizes and each jsd case's peak as a multiple of it."""
    mib = 2.0**20
    parts = {
        "dW_mb": args.v * args.h_student * 4 / mib,
        "dh_mb": args.n * args.h_student * 4 / mib,
        "chunk_logits_mb": 3 * min(args.chunk, args.n) * args.v * 4 / mib,
    }
    total = floor_bytes(args.n, args.v, args.h_student, args.chunk) / mib
    multiples = {c: round(r["peak_mb"] / total, 3) for c, r in cases.items()
                 if r.get("status") == "ok" and CASES[c].group == "jsd"}
    return {"mb": round(total, 1), **{k: round(v, 1) for k, v in parts.items()}, "chunk": args.chunk,
            "memory_ratio": multiples}


def judge_targets(ratio: Dict[str, Dict[str, Any]], size) -> Dict[str, Optional[bool]]:
    """target -> met, or None where the ratio is missing or the size is not the targets' (at --quick
    sizes fixed costs dominate, so a miss there says nothing)."""
    met: Dict[str, Optional[bool]] = {}
    for key, target in TARGETS.items():
        name, kind = key.rsplit(".", 1)
        value = ratio.get(name, {}).get(kind)
        met[key] = None if value is None or tuple(size) != TARGET_SIZE else value <= target
    return met


def run_benchmark(args) -> Dict[str, Any]:

    t0 = time.perf_counter()
    selected = [c for c in CASES if c in args.cases]
    cases: Dict[str, Dict[str, Any]] = {}
    for group in GROUPS:
        todo = []
        for case in group:
            if case not in selected:
                continue
            missing = peer_missing(CASES[case].peer)
            if missing:
                cases[case] = {"status": "skipped", "reason": missing}
            else:
                todo.append(case)
        if todo:
            cases.update(run_group(args, todo))
    for case, res in cases.items():
        res["label"] = CASES[case].label
        res["peer"] = CASES[case].peer
        if CASES[case].peer:
            res["version"] = peer_version(CASES[case].peer)
    ratio = ratios(cases)
    fl = floor(args, cases)
    for case, multiple in fl["memory_ratio"].items():
        if case.startswith("adakd_fused"):
            ratio[f"{case}_vs_floor"] = {"status": "ok", "time": None, "time_alternated": None, "memory": multiple}
    met = judge_targets(ratio, (args.n, args.v, args.h_student, args.h_teacher))
    return {
        "benchmark": "peers",
        "config": {"n": args.n, "v": args.v, "h_student": args.h_student, "h_teacher": args.h_teacher,
                   "beta": args.beta, "adakd_chunk": args.chunk, "liger_chunk": 1024, "torchtune_chunks": 8,
                   "reps": args.reps, "threads": args.threads, "seed": args.seed, "quick": args.quick,
                   "malloc_env": MALLOC_ENV},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "cases": cases,
        "floor": fl,
        "ratios": ratio,
        "value_checks": value_checks(cases),
        "targets": TARGETS,
        "targets_size": dict(zip(("n", "v", "h_student", "h_teacher"), TARGET_SIZE)),
        "met": met,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def markdown(result: Dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"KD losses, N = {cfg['n']} tokens, V = {cfg['v']}, student hidden {cfg['h_student']}, teacher hidden "
        f"{cfg['h_teacher']}, {cfg['threads']} torch thread(s); peak = RSS growth, time = median of {cfg['reps']}",
        "",
        "| case | peak MB | time s | loss | value check |",
        "|---|---|---|---|---|",
    ]
    checks = result["value_checks"]
    for case, res in result["cases"].items():
        label = res["label"] + (f" [{res['version']}]" if res.get("version") else "")
        if res["status"] != "ok":
            lines.append(f"| {label} | {res['status']}: {res.get('reason') or res.get('error', '')[:200]} | | | |")
            continue
        chk = checks.get(case, {})
        note = ""
        if chk.get("status") in ("ok", "mismatch"):
            note = f"{chk['status']} (rel err {chk['rel_err']:.1e}"
            if "convention_check" in chk:
                cc = chk["convention_check"]
                note += f"; f64 beta={cc['beta']}: value {cc['value_rel_err']:.0e}, grad {cc['grad_rel_err']:.0e}"
            note += ")"
        lines.append(f"| {label} | {res['peak_mb']:,.0f} | {res['time_s']:.3g} | {res['loss']:.6f} | {note} |")
    fl = result["floor"]
    lines += ["", f"memory floor (dW {fl['dW_mb']} + dh {fl['dh_mb']} + 3 x {fl['chunk']} rows of fp32 logits "
              f"{fl['chunk_logits_mb']}): {fl['mb']} MB; peak / floor: "
              + ", ".join(f"{c} {m}" for c, m in fl["memory_ratio"].items())]
    lines += ["", "| ratio (measured / baseline) | time | memory |", "|---|---|---|"]
    for name, r in result["ratios"].items():
        if r["status"] != "ok":
            lines.append(f"| {name} | skipped: {r['reason']} | |")
        elif r["time"] is None:
            lines.append(f"| {name} | | {r['memory']} |")
        else:
            alt = "" if r["time_alternated"] else " (not alternated)"
            lines.append(f"| {name} | {r['time']}{alt} | {r['memory']} |")
    lines.append("")
    lines.append("targets: " + ", ".join(f"{k} <= {v}: {result['met'][k]}" for k, v in TARGETS.items()))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--quick", action="store_true", help="N = 256, V = 8192, 2 repeats")
    p.add_argument("--n", type=int, default=None, help="tokens (default 2048; --quick 256)")
    p.add_argument("--v", type=int, default=None, help="vocabulary (default 50257; --quick 8192)")
    p.add_argument("--h-student", type=int, default=768)
    p.add_argument("--h-teacher", type=int, default=1024)
    p.add_argument("--beta", type=float, default=0.5, help="JSD teacher weight (method.md's beta)")
    p.add_argument("--chunk", type=int, default=128, help="adakd's tokens per chunk (as adakd.bench.loss)")
    p.add_argument("--reps", type=int, default=2, help="timed runs per case, after one warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (one: a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=DEFAULT_CASES,
                   help="default: all but adakd_reference (adakd.bench.loss measures it; it adds ~10 GB and a minute)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n = args.n or (256 if args.quick else 2048)
    args.v = args.v or (8192 if args.quick else 50257)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve(args)
    result = run_benchmark(args)
    text = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(markdown(result))
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
