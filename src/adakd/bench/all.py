"""`make bench`: every benchmark of the project in one go, and one JSON with every ratio.

    python -m adakd.bench.all [--quick] [--out outputs/bench/bench.json] [--only loss,peers,...]

Each benchmark runs in its own process (they measure memory as RSS growth, and a fresh process is the only
clean baseline), one after the other, with one torch thread each, and prints its own JSON; this driver
gathers them under their names, adds the wall time of each, and writes bench.json. A benchmark that fails
is recorded with its error, and the driver goes on (exit status 1 at the end).

    loss              adakd's reference / chunked / fused objective: memory and time ratios, the training-step
                      overhead of AdaKD (bench.loss)
    peers             the same losses against TRL, Liger-Kernel and torchtune where installed (bench.peers)
    e2e               on-policy distillation steps end to end: adakd gkd against TRL's DistillationTrainer (bench.e2e)
    generate          the batched sampler against transformers one prompt at a time (bench.generate)
    generate_batched  the batched sampler against transformers' batched `generate` (bench.generate_batched)
    teacher_cache     fidelity, speed and size of the top-k teacher cache (bench.teacher_cache)
    engines_world     native sampler, transformers `generate` and vLLM on the world teacher (bench.generate_engines)
    engines_smollm2   the same on SmolLM2-135M-Instruct (`make models`; skipped with the reason without it)

The engine benchmarks run with the Python of .venv-vllm (`make install-vllm`; ADAKD_VLLM_PYTHON names another)
where this one has no vLLM, and report `skipped` with the reason where neither has it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

BENCHES: Dict[str, List[str]] = {   # name -> module and the arguments of the full run
    "loss": ["adakd.bench.loss", "--json"],
    "peers": ["adakd.bench.peers", "--json"],
    "e2e": ["adakd.bench.e2e", "--json"],
    "generate": ["adakd.bench.generate", "--json", "--threads", "1"],
    "generate_batched": ["adakd.bench.generate_batched", "--json"],
    "teacher_cache": ["adakd.bench.teacher_cache", "--json"],
    "engines_world": ["adakd.bench.generate_engines", "--json", "--model", "builtin:world-teacher"],
    "engines_smollm2": ["adakd.bench.generate_engines", "--json", "--model", "outputs/models/smollm2-135m-instruct"],
}
VLLM_BENCHES = ("engines_world", "engines_smollm2")
QUICK: Dict[str, List[str]] = {     # the --quick variants: the whole set in about two minutes
    "loss": ["--quick"], "peers": ["--quick"], "e2e": ["--quick"], "generate": ["--n-prompts", "8", "--max-new-tokens", "32"],
    "generate_batched": ["--quick"], "teacher_cache": ["--quick"], "engines_world": ["--quick"],
    "engines_smollm2": ["--quick"],
}
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_NUM_THREADS": "1"}


def ratios_of(name: str, result: Any) -> Dict[str, Any]:
    """Every number named like a ratio in a benchmark's JSON, flattened to dotted keys."""
    out: Dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and ("ratio" in path or "speedup" in path):
            out[path] = node
    walk(result, name)
    return out


def last_json(text: str) -> Any:
    """The JSON object a benchmark printed (the last top-level object on stdout)."""
    start = text.find("{")
    while start >= 0:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise ValueError("no JSON object in the output")


def python_for(name: str) -> str:
    """This interpreter, or for an engine benchmark one that has vLLM (the project's .venv-vllm) if this one lacks
    it (the benchmark then reports itself skipped)."""
    if name not in VLLM_BENCHES or importlib.util.find_spec("vllm") is not None:
        return sys.executable
    other = os.environ.get("ADAKD_VLLM_PYTHON") or ".venv-vllm/bin/python"
    return other if Path(other).is_file() else sys.executable


def run(names: List[str], quick: bool) -> Dict[str, Any]:
    results: Dict[str, Any] = {"quick": quick, "benchmarks": {}, "ratios": {}, "failed": []}
    t_all = time.time()
    for name in names:
        cmd = [python_for(name), "-m", *BENCHES[name], *(QUICK[name] if quick else [])]
        print(f"[bench] {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
        seconds = round(time.time() - t0, 1)
        entry: Dict[str, Any] = {"seconds": seconds, "returncode": proc.returncode}
        try:
            entry["result"] = last_json(proc.stdout)
            results["ratios"].update(ratios_of(name, entry["result"]))
        except ValueError as e:
            entry["error"] = f"{e}; stderr: {proc.stderr.strip()[-2000:]}"
        if proc.returncode != 0 or "error" in entry:
            results["failed"].append(name)
            entry.setdefault("error", proc.stderr.strip()[-2000:])
        results["benchmarks"][name] = entry
        print(f"[bench] {name}: {seconds} s{' FAILED' if name in results['failed'] else ''}", file=sys.stderr,
              flush=True)
    results["seconds"] = round(time.time() - t_all, 1)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m adakd.bench.all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: about two minutes on 2 CPU cores")
    p.add_argument("--out", default="outputs/bench/bench.json", help="where the combined JSON goes")
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {list(BENCHES)}")
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    results = run(names, a.quick)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in sorted(results["ratios"].items()):
        print(f"{key} = {value}")
    print(f"bench: {len(names)} benchmarks in {results['seconds']} s -> {out}"
          + (f"; FAILED: {', '.join(results['failed'])}" if results["failed"] else ""))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
