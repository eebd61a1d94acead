"""Benchmark of the KD objective: time and peak memory of reference vs chunked vs fused, and the cost
of AdaKD in a whole training step.

    python -m adakd.bench.loss --json            # N = 2048 tokens x V = 50257, GPT-2 shaped step
    python -m adakd.bench.loss --json --quick    # shrunk: about a minute on 2 CPU cores

Loss part: forward + backward of rkl and of rkl+AdaKD (ratio 0.75, IDTS on) on N tokens x V.
Implementations ("cases"), each in its own process:
  reference         logits in, everything materialised (the oracle)
  chunked           logits in, token-chunked
  reference_hidden  hidden states + LM-head weights in, logits materialised, then the reference
  fused             hidden states + LM-head weights in, two-pass fused path
chunked is compared with reference (same inputs), fused with reference_hidden (same inputs).

Measurement. Memory: each process's peak RSS growth after its inputs were built and a tiny run of
the same code (CPU; on CUDA the allocator's peak). Time: the two cases of a comparison run as two
live processes that take turns, one forward+backward each, after one untimed warm-up; a ratio is
the median of the ratios of neighbouring runs. On a shared machine the load changes over minutes;
alternating keeps both sides of a ratio under the same load. The workers run with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (glibc otherwise page-faults on every large
tensor; see the environment notes) and one torch thread each (--threads): on a shared machine a
2-thread parallel region waits for whichever thread another process has preempted, which made the
same run vary from 8 ms to 1 s here.

Training step: student of GPT-2-base shape, teacher of GPT-2-medium shape (random init), batch 4 x 256:
student forward + backward, teacher forward, KD loss; rkl+AdaKD vs rkl with the same loss
implementation, alternated in one process, median of neighbouring ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from adakd.kd.objective import HiddenStates, build_objective
from adakd.schema import AdakdConfig, MethodConfig

from .worker import MALLOC_ENV, Worker

LOSSES = ("rkl", "rkl_adakd")
IMPLS = ("reference", "chunked", "reference_hidden", "fused")
# (baseline case, measured case) pairs; a case is (loss, impl)
PAIRS = {
    "chunked/rkl": (("rkl", "reference"), ("rkl", "chunked")),
    "chunked/rkl_adakd": (("rkl_adakd", "reference"), ("rkl_adakd", "chunked")),
    "fused/rkl": (("rkl", "reference_hidden"), ("rkl", "fused")),
    "fused/rkl_adakd": (("rkl_adakd", "reference_hidden"), ("rkl_adakd", "fused")),
    "adakd_loss": (("rkl", "chunked"), ("rkl_adakd", "chunked")),
}
TARGETS = {
    "chunked_memory": 0.25,
    "fused_memory": 0.10,
    "chunked_time": 1.1,
    "fused_time": 1.1,
    "adakd_overhead": 1.10,
}


def _objective(loss: str, impl: str, chunk: int, total_steps: int = 100):
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
        torch.cuda.synchronize()


def _median_ratio(base: List[float], measured: List[float]) -> float:
    return round(statistics.median(m / b for b, m in zip(base, measured, strict=True)), 4)


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None where b is 0 (toy sizes can show no measurable memory growth)."""
    return round(a / b, 4) if b > 0 else None


def _worst(values: List[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


# ------------------------------------------------------------------------------------------------
# one loss case (runs inside its own worker process)
# ------------------------------------------------------------------------------------------------
class LossCase:
    """Inputs and objective of one (loss, impl) case; `run()` is one timed forward + backward."""

    def __init__(self, args):
        torch.manual_seed(0)
        self.dev, dtype = args.device, getattr(torch, args.dtype)
        n, v, hs_dim, ht_dim = args.n, args.v, args.h_student, args.h_teacher
        self.hidden = args.impl in ("reference_hidden", "fused")
        with torch.no_grad():  # built in place: no temporaries that would raise the RSS baseline
            if self.hidden:
                # hidden states and head weights scaled so the logits spread like a trained LM's
                self.hs = torch.randn(n, hs_dim, device=self.dev, dtype=dtype)
                self.ws = torch.randn(v, hs_dim, device=self.dev, dtype=dtype).mul_(3.0 / hs_dim**0.5)
                self.ht = torch.randn(n, ht_dim, device=self.dev, dtype=dtype)
                self.wt = torch.randn(v, ht_dim, device=self.dev, dtype=dtype).mul_(3.0 / ht_dim**0.5)
                self.leaves = [self.hs.requires_grad_(), self.ws.requires_grad_()]
            else:
                self.s = torch.randn(1, n, v, device=self.dev, dtype=dtype).mul_(3.0)
                self.t = torch.randn(1, n, v, device=self.dev, dtype=dtype).mul_(3.0)
                self.leaves = [self.s.requires_grad_()]
            self.labels = torch.zeros(1, n, dtype=torch.long, device=self.dev)
        self.obj = _objective(args.loss, args.impl, args.chunk)
        self._step(tiny=True)  # pages in the kernels' code and thread pools before the baseline
        gc.collect()
        if self.dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = _rss_mb()

    def _step(self, tiny: bool = False) -> float:
        if tiny:
            k, w = 8, 64
            if self.hidden:
                x = [self.hs[:k].detach().requires_grad_(), self.ws[:w].detach().requires_grad_()]
                loss, _ = self.obj(HiddenStates(x[0][None], x[1]), HiddenStates(self.ht[:k][None], self.wt[:w]),
                                   self.labels[:, :k])
            else:
                x = [self.s[:, :k, :w].detach().requires_grad_()]
                loss, _ = self.obj(x[0], self.t[:, :k, :w], self.labels[:, :k])
        else:
            x = self.leaves
            if self.hidden:
                loss, _ = self.obj(HiddenStates(self.hs[None], self.ws), HiddenStates(self.ht[None], self.wt),
                                   self.labels)
            else:
                loss, _ = self.obj(self.s, self.t, self.labels)
        loss.backward()
        value = float(loss.detach())
        for leaf in x:
            leaf.grad = None
        return value

    def run(self) -> Tuple[float, float]:
        _sync(self.dev)
        t0 = time.perf_counter()
        value = self._step()
        _sync(self.dev)
        return time.perf_counter() - t0, value

    def peak_mb(self) -> float:
        if self.dev == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return _rss_mb() - self.base


def serve_loss_case(args) -> None:
    """Worker protocol on stdin/stdout, one JSON line per answer: `run` -> time, `peak` -> memory."""
    case = LossCase(args)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t, value = case.run()
            print(json.dumps({"time_s": t, "loss": value}), flush=True)
        elif cmd == "peak":
            print(json.dumps({"peak_mb": case.peak_mb()}), flush=True)
        elif cmd == "quit":
            return


# ------------------------------------------------------------------------------------------------
# training step (one process, both losses alternating)
# ------------------------------------------------------------------------------------------------
def worker_train(args) -> Dict[str, Any]:
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
    labels = ids.roll(-1, dims=1)  # labels aligned with the logit positions
    labels[:, : args.seq // 4] = -100  # prompt part
    labels[:, -1] = -100
    objectives = {loss: _objective(loss, args.train_impl, args.chunk) for loss in LOSSES}

    def step(loss_name: str) -> float:
        obj = objectives[loss_name]
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            t_out = teacher(input_ids=ids, output_hidden_states=args.train_impl == "fused")
        if args.train_impl == "fused":
            s_out = student.transformer(input_ids=ids)
            loss, _ = obj(HiddenStates(s_out.last_hidden_state, student.lm_head.weight),
                          HiddenStates(t_out.hidden_states[-1], teacher.lm_head.weight), labels)
        else:
            s_logits = student(input_ids=ids).logits
            loss, _ = obj(s_logits, t_out.logits, labels)
        loss.backward()
        _sync(dev)
        elapsed = time.perf_counter() - t0
        student.zero_grad(set_to_none=True)
        return elapsed

    for loss_name in LOSSES:  # warm-up
        step(loss_name)
    times: Dict[str, List[float]] = {loss: [] for loss in LOSSES}
    for rep in range(args.train_reps):
        for loss_name in LOSSES if rep % 2 == 0 else LOSSES[::-1]:
            times[loss_name].append(step(loss_name))
    return {
        **{loss: {"time_s": min(ts), "times_s": ts} for loss, ts in times.items()},
        "adakd_overhead": _median_ratio(times["rkl"], times["rkl_adakd"]),
    }


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def _worker_cmd(args, extra: List[str]) -> List[str]:
    cmd = [sys.executable, "-m", "adakd.bench.loss"]
    for flag in (
        "n",
        "v",
        "chunk",
        "device",
        "dtype",
        "h_student",
        "h_teacher",
        "batch",
        "seq",
        "train_reps",
        "train_impl",
        "threads",
    ):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return cmd + (["--quick"] if args.quick else []) + extra


def _worker(args, loss: str, impl: str) -> Worker:
    return Worker(_worker_cmd(args, ["--worker", "loss", "--loss", loss, "--impl", impl]), f"{loss}/{impl}")


def run_pair(args, base_case: Tuple[str, str], measured_case: Tuple[str, str]) -> Dict[str, Any]:
    """Two live worker processes taking turns; returns their times, losses and peak memory."""
    workers = [_worker(args, *base_case), _worker(args, *measured_case)]
    try:
        for w in workers:
            w.ask("")  # ready (inputs built)
        for w in workers:
            w.ask("run")  # untimed warm-up
        times: List[List[float]] = [[], []]
        losses = [0.0, 0.0]
        for rep in range(args.reps):
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                out = workers[i].ask("run")
                times[i].append(out["time_s"])
                losses[i] = out["loss"]
        peaks = [w.ask("peak")["peak_mb"] for w in workers]
    finally:
        for w in workers:
            w.close()
    return {
        "base": {"case": workers[0].name, "times_s": times[0], "peak_mb": peaks[0], "loss": losses[0]},
        "measured": {"case": workers[1].name, "times_s": times[1], "peak_mb": peaks[1], "loss": losses[1]},
        "time_ratio": _median_ratio(times[0], times[1]),
        "time_ratio_of_minima": _ratio(min(times[1]), min(times[0])),
        "memory_ratio": _ratio(peaks[1], peaks[0]),
    }


def run_benchmark(args) -> Dict[str, Any]:
    pairs = {name: run_pair(args, *cases) for name, cases in PAIRS.items()}
    per_loss = {
        loss: {
            "chunked_memory": pairs[f"chunked/{loss}"]["memory_ratio"],
            "fused_memory": pairs[f"fused/{loss}"]["memory_ratio"],
            "chunked_time": pairs[f"chunked/{loss}"]["time_ratio"],
            "fused_time": pairs[f"fused/{loss}"]["time_ratio"],
        }
        for loss in LOSSES
    }
    # Headline = the worse of the two losses.
    ratios: Dict[str, Any] = {
        key: _worst([per_loss[loss][key] for loss in LOSSES]) for key in per_loss["rkl"]
    }
    ratios["adakd_loss_overhead"] = pairs["adakd_loss"]["time_ratio"]
    train = None
    if not args.skip_train:
        proc = subprocess.run(
            _worker_cmd(args, ["--worker", "train"]),
            capture_output=True,
            text=True,
            env={**os.environ, **MALLOC_ENV},
            timeout=args.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"training-step worker failed:\n{proc.stderr[-4000:]}")
        train = json.loads(proc.stdout.strip().splitlines()[-1])
        ratios["adakd_overhead"] = train["adakd_overhead"]
    met = {
        key: ratios[key] is not None and ratios[key] <= target
        for key, target in TARGETS.items()
        if key in ratios
    }
    return {
        "config": {
            "n": args.n,
            "v": args.v,
            "chunk": args.chunk,
            "dtype": args.dtype,
            "device": args.device,
            "reps": args.reps,
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
            "adakd": repr(_objective("rkl_adakd", "chunked", args.chunk)),
            "malloc_env": MALLOC_ENV,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "pairs": pairs,
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
    p.add_argument("--chunk", type=int, default=128, help="tokens per chunk (chunked / fused)")
    p.add_argument("--reps", type=int, default=4, help="timed runs per case, alternating within a pair")
    p.add_argument("--h-student", type=int, default=768)
    p.add_argument("--h-teacher", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--train-reps", type=int, default=3)
    p.add_argument("--train-impl", choices=("chunked", "fused", "reference"), default="chunked")
    p.add_argument("--skip-train", action="store_true", help="loss benchmark only")
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute on 2 CPU cores")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (0: torch default). 1 by default: on a shared 2-core machine a "
        "2-thread parallel region stalls whenever another process holds a core, which swamps the ratios",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the training-step worker")
    p.add_argument("--worker", choices=("loss", "train"), help=argparse.SUPPRESS)
    p.add_argument("--loss", choices=LOSSES, help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or 512
        args.v = args.v or 8192
        args.h_student, args.h_teacher = min(args.h_student, 128), min(args.h_teacher, 192)
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 64)
        args.reps, args.train_reps = min(args.reps, 2), min(args.train_reps, 2)
    args.n = args.n or 2048
    args.v = args.v or 50257
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker and args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker == "loss":
        serve_loss_case(args)
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
