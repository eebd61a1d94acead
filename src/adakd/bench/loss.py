"""Benchmark of the KD objective: time and peak memory of reference vs chunked vs fused, and the cost
of AdaKD in a whole training step.

    python -m adakd.bench.loss --json            # N = 2048 tokens x V = 50257, GPT-2 shaped step
    python -m adakd.bench.loss --json --quick    # shrunk: about a minute on 2 CPU cores

Loss part: forward + backward of rkl and of rkl+AdaKD (ratio 0.75, IDTS on) on N tokens x V. Each
(loss, implementation) runs in its own subprocess, so peak memory is that process's peak RSS growth
after its inputs were built (CPU; on CUDA the allocator's peak). Implementations:
  reference         logits in, everything materialised (the oracle)
  chunked           logits in, token-chunked
  reference_hidden  hidden states + LM-head weights in, logits materialised, then the reference
  fused             hidden states + LM-head weights in, two-pass fused path
chunked is compared with reference (same inputs), fused with reference_hidden (same inputs).

Training step: student of GPT-2-base shape, teacher of GPT-2-medium shape (random init), batch 4 x 256:
student forward + backward, teacher forward, KD loss; rkl+AdaKD vs rkl with the same loss
implementation, alternated in one process so machine-load drift hits both alike.

Times are the minimum over the timed repetitions (after one warm-up). The subprocesses run with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (glibc otherwise page-faults on every large
tensor; see the environment notes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
LOSSES = ("rkl", "rkl_adakd")
IMPLS = ("reference", "chunked", "reference_hidden", "fused")
TARGETS = {
    "chunked_memory": 0.25,
    "fused_memory": 0.10,
    "chunked_time": 1.1,
    "fused_time": 1.1,
    "adakd_overhead": 1.10,
}


def _objective(loss: str, impl: str, chunk: int, total_steps: int = 100):
    from adakd.objective import build_objective
    from adakd.schema.objective import AdakdConfig, MethodConfig

    if loss == "rkl":
        adakd = AdakdConfig(name="none", latf=False, idts=False)
    else:  # steady-state AdaKD: ratio 0.75 and IDTS (LATF's own schedule would start at r = 1)
        adakd = AdakdConfig(name="bench", latf=True, idts=True, ratio_schedule="fixed", ratio_end=0.75)
    obj_impl = "reference" if impl.startswith("reference") else ("fused" if impl == "fused" else "chunked")
    return build_objective(
        MethodConfig(name="rkl", divergence="rkl"),
        adakd,
        total_steps=total_steps,
        impl=obj_impl,
        chunk_size=chunk,
    )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# workers (run in subprocesses)
# ------------------------------------------------------------------------------------------------
def worker_loss(args) -> Dict[str, Any]:
    import torch

    torch.manual_seed(0)
    dev, dtype = args.device, getattr(torch, args.dtype)
    n, v, hs_dim, ht_dim = args.n, args.v, args.h_student, args.h_teacher
    hidden = args.impl in ("reference_hidden", "fused")
    with torch.no_grad():
        if hidden:
            # Hidden states and head weights scaled so the logits have a spread like a trained LM's.
            hs = torch.randn(n, hs_dim, device=dev, dtype=dtype)
            ws = torch.randn(v, hs_dim, device=dev, dtype=dtype).mul_(3.0 / hs_dim**0.5)
            ht = torch.randn(n, ht_dim, device=dev, dtype=dtype)
            wt = torch.randn(v, ht_dim, device=dev, dtype=dtype).mul_(3.0 / ht_dim**0.5)
            leaves = [hs.requires_grad_(), ws.requires_grad_()]
        else:
            s = torch.randn(1, n, v, device=dev, dtype=dtype).mul_(3.0)
            t = torch.randn(1, n, v, device=dev, dtype=dtype).mul_(3.0)
            leaves = [s.requires_grad_()]
        labels = torch.zeros(1, n, dtype=torch.long, device=dev)
    obj = _objective(args.loss, args.impl, args.chunk)

    def run(tiny: bool = False) -> float:
        if tiny:  # same code path on small inputs: pages in kernels' code and thread pools first
            k = 8
            if hidden:
                x = [hs[:k].detach().requires_grad_(), ws[:64].detach().requires_grad_()]
                loss, _ = obj.forward_hidden(
                    x[0].unsqueeze(0), x[1], ht[:k].unsqueeze(0), wt[:64], labels[:, :k]
                )
            else:
                x = [s[:, :k, :64].detach().requires_grad_()]
                loss, _ = obj(x[0], t[:, :k, :64], labels[:, :k])
        else:
            x = leaves
            if hidden:
                loss, _ = obj.forward_hidden(hs.unsqueeze(0), ws, ht.unsqueeze(0), wt, labels)
            else:
                loss, _ = obj(s, t, labels)
        loss.backward()
        value = float(loss.detach())
        for leaf in x:
            leaf.grad = None
        return value

    run(tiny=True)
    gc.collect()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    times: List[float] = []
    value = 0.0
    for rep in range(args.reps + 1):
        _sync(dev)
        t0 = time.perf_counter()
        value = run()
        _sync(dev)
        if rep > 0:  # rep 0 is the warm-up
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else _rss_mb()) - base
    return {"time_s": min(times), "times_s": times, "peak_mb": peak, "loss": value}


def worker_train(args) -> Dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    dev = args.device
    if args.quick:
        s_cfg = dict(n_layer=2, n_embd=128, n_head=4)
        t_cfg = dict(n_layer=4, n_embd=192, n_head=4)
    else:  # GPT-2 base and GPT-2 medium shapes
        s_cfg = dict(n_layer=12, n_embd=768, n_head=12)
        t_cfg = dict(n_layer=24, n_embd=1024, n_head=16)
    common = dict(vocab_size=args.v, n_positions=max(1024, args.seq))
    student = GPT2LMHeadModel(GPT2Config(**common, **s_cfg)).to(dev).train()
    teacher = GPT2LMHeadModel(GPT2Config(**common, **t_cfg)).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.v, (args.batch, args.seq), generator=g).to(dev)
    labels = ids.roll(-1, dims=1)
    labels[:, : args.seq // 4] = -100  # prompt part
    labels[:, -1] = -100
    objectives = {loss: _objective(loss, args.train_impl, args.chunk) for loss in LOSSES}

    def step(loss_name: str) -> float:
        obj = objectives[loss_name]
        t0 = time.perf_counter()
        with torch.no_grad():
            t_out = teacher(input_ids=ids, output_hidden_states=args.train_impl == "fused")
        if args.train_impl == "fused":
            s_out = student.transformer(input_ids=ids)
            loss, _ = obj.forward_hidden(
                s_out.last_hidden_state,
                student.lm_head.weight,
                t_out.hidden_states[-1],
                teacher.lm_head.weight,
                labels,
            )
        else:
            s_logits = student(input_ids=ids).logits
            loss, _ = obj(s_logits, t_out.logits, labels)
        loss.backward()
        _sync(dev)
        elapsed = time.perf_counter() - t0
        student.zero_grad(set_to_none=True)
        return elapsed

    times: Dict[str, List[float]] = {loss: [] for loss in LOSSES}
    for rep in range(args.train_reps + 1):
        order = LOSSES if rep % 2 == 0 else LOSSES[::-1]
        for loss_name in order:
            elapsed = step(loss_name)
            if rep > 0:
                times[loss_name].append(elapsed)
    return {loss: {"time_s": min(ts), "times_s": ts} for loss, ts in times.items()}


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def _spawn(args, extra: List[str], timeout: float) -> Dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "adakd.bench.loss",
        "--n",
        str(args.n),
        "--v",
        str(args.v),
        "--chunk",
        str(args.chunk),
        "--reps",
        str(args.reps),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--h-student",
        str(args.h_student),
        "--h-teacher",
        str(args.h_teacher),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--train-reps",
        str(args.train_reps),
        "--train-impl",
        args.train_impl,
        "--threads",
        str(args.threads),
    ] + extra
    if args.quick:
        cmd.append("--quick")
    env = {**os.environ, **MALLOC_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(extra)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b > 0 else float("nan")


def run_benchmark(args) -> Dict[str, Any]:
    import torch

    # Rounds of all variants, interleaved; per variant the minimum over rounds (time and memory), so a
    # burst of load from other processes during one run does not decide a ratio.
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {loss: {impl: [] for impl in IMPLS} for loss in LOSSES}
    for rnd in range(args.rounds):
        for loss in LOSSES:
            for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
                runs[loss][impl].append(
                    _spawn(args, ["--worker", "loss", "--loss", loss, "--impl", impl], timeout=args.timeout)
                )
    loss_results: Dict[str, Dict[str, Any]] = {
        loss: {
            impl: {
                "time_s": min(r["time_s"] for r in rs),
                "peak_mb": min(r["peak_mb"] for r in rs),
                "times_s": [t for r in rs for t in r["times_s"]],
                "peak_mb_runs": [r["peak_mb"] for r in rs],
                "loss": rs[0]["loss"],
            }
            for impl, rs in by_impl.items()
        }
        for loss, by_impl in runs.items()
    }
    per_loss = {}
    for loss, r in loss_results.items():
        per_loss[loss] = {
            "chunked_memory": _ratio(r["chunked"]["peak_mb"], r["reference"]["peak_mb"]),
            "fused_memory": _ratio(r["fused"]["peak_mb"], r["reference_hidden"]["peak_mb"]),
            "chunked_time": _ratio(r["chunked"]["time_s"], r["reference"]["time_s"]),
            "fused_time": _ratio(r["fused"]["time_s"], r["reference_hidden"]["time_s"]),
        }
    # Headline = the worse of the two losses.
    ratios: Dict[str, float] = {key: max(per_loss[loss][key] for loss in LOSSES) for key in per_loss["rkl"]}
    ratios["adakd_loss_overhead"] = _ratio(
        loss_results["rkl_adakd"]["chunked"]["time_s"], loss_results["rkl"]["chunked"]["time_s"]
    )
    train = None
    if not args.skip_train:
        train = _spawn(args, ["--worker", "train"], timeout=args.timeout * 4)
        ratios["adakd_overhead"] = _ratio(train["rkl_adakd"]["time_s"], train["rkl"]["time_s"])
    met = {key: (ratios[key] <= target) for key, target in TARGETS.items() if key in ratios}
    return {
        "config": {
            "n": args.n,
            "v": args.v,
            "chunk": args.chunk,
            "dtype": args.dtype,
            "device": args.device,
            "reps": args.reps,
            "rounds": args.rounds,
            "threads": args.threads or None,
            "h_student": args.h_student,
            "h_teacher": args.h_teacher,
            "train": None
            if args.skip_train
            else {
                "batch": args.batch,
                "seq": args.seq,
                "impl": args.train_impl,
                "quick": args.quick,
                "reps": args.train_reps,
            },
            "adakd": "ratio 0.75 (fixed), IDTS c=0.5, hellinger",
            "malloc_env": MALLOC_ENV,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "loss": loss_results,
        "train_step": train,
        "ratios_per_loss": per_loss,
        "ratios": ratios,
        "targets": TARGETS,
        "met": met,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--n", type=int, default=None, help="tokens (default 2048; --quick 512)")
    p.add_argument("--v", type=int, default=None, help="vocabulary (default 50257; --quick 8192)")
    p.add_argument("--chunk", type=int, default=64, help="tokens per chunk (chunked / fused)")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions after one warm-up")
    p.add_argument("--rounds", type=int, default=2, help="subprocess rounds per variant (min is kept)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch default)")
    p.add_argument("--h-student", type=int, default=768)
    p.add_argument("--h-teacher", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--train-reps", type=int, default=2)
    p.add_argument("--train-impl", choices=("chunked", "fused", "reference"), default="chunked")
    p.add_argument("--skip-train", action="store_true", help="loss benchmark only")
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute on 2 CPU cores")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    p.add_argument("--worker", choices=("loss", "train"), help=argparse.SUPPRESS)
    p.add_argument("--loss", choices=LOSSES, help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or 512
        args.v = args.v or 8192
        args.h_student, args.h_teacher = min(args.h_student, 128), min(args.h_teacher, 192)
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 64)
        args.reps, args.train_reps, args.rounds = (
            min(args.reps, 2),
            min(args.train_reps, 2),
            min(args.rounds, 1),
        )
    args.n = args.n or 2048
    args.v = args.v or 50257
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker == "loss":
        print(json.dumps(worker_loss(args)))
        return 0
    if args.worker == "train":
        print(json.dumps(worker_train(args)))
        return 0
    result = run_benchmark(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
        print("ratios:", json.dumps(result["ratios"]), "met:", json.dumps(result["met"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
