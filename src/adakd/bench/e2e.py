"""On-policy distillation end to end: adakd `method=gkd` (every batch on-policy) against TRL's DistillationTrainer.

    python -m adakd.bench.e2e --json          # the shipped world pair, 10 steps of 16 prompts, 64 new tokens
    python -m adakd.bench.e2e --quick         # 3 steps of 4 prompts, 32 new tokens
    pip install -e ".[bench]"                 # TRL (>= 1.12); its side is skipped with the reason without it

The same student (the shipped world student, 2 x 128 GPT-2) distilled from the same teacher (the shipped
world teacher, 4 x 192), one tokenizer; the same prompts in the same order (the first steps x batch prompts
adakd's trainer draws from the world training split; TRL gets their text, re-tokenised: the ids are checked
to come back the same), batch, max new tokens and sampling (T = 1, no top-k / top-p), the same divergence
(generalized JSD, beta 0.1 by default, one convention: m = beta p_teacher + (1 - beta) q_student), AdamW at
the same learning rate, weight decay and clip, no gradient checkpointing, one torch thread.

  adakd   adakd's trainer as `adakd-run experiment=world method=gkd adakd=none` builds it, with
          method.recipe_params.lambda=1 (every micro-batch replaced by student samples), the native sampler
  trl     trl.DistillationTrainer (always on-policy), transformers' `generate` as its sampler
  vLLM    either side with vLLM: adakd's where this interpreter has vLLM (`make install-vllm`), else skipped
          with the reason; TRL's (colocate or server mode) needs a GPU or a server and is not run here

Per side, in a process of its own: seconds per optimizer step (median over the steps after the first, which
pays for lazy initialisation), sampled tokens per second and trained tokens (prompt + response) per second,
the share of each step spent sampling (adakd: the recipe's sampling; TRL: its `_generate`), and the peak
memory: RSS growth over the process after both models were loaded (and the total peak RSS). The samples
differ between the sides (each its own random stream), so tokens per second, not seconds, compare the work.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra import compose, initialize_config_module
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from adakd.assemble.context import Context
from adakd.assemble.data import encoded_train, run_data
from adakd.assemble.identity import model_path
from adakd.assemble.student import get_student
from adakd.assemble.teacher import Teacher, get_teacher
from adakd.assemble.tokenizer import get_tokenizer
from adakd.assemble.trainer import build_trainer
from adakd.experiment.config_check import validate_config
from adakd.experiment.config_store import register_configs
from adakd.experiment.tasks import plan_jobs
from adakd.tracking import NullLogger
from adakd.training.recipes.common import prompt_of_example
from adakd.training.schedule import EpochSampler, seed_everything

from .peer_cases import peer_missing, peer_version
from .worker import MALLOC_ENV

SIDES = ("adakd", "trl", "adakd_vllm")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _overrides(a, output_root: str, engine: str = "native") -> List[str]:
    return [
        "experiment=world", "method=gkd", "adakd=none", "run.baselines=[]", "logger=none", "run.progress=false",
        f"run.output_root={output_root}", "method.recipe_params.lambda=1.0",
        f"method.recipe_params.max_new_tokens={a.max_new_tokens}", f"method.recipe_params.engine={engine}",
        f"method.params.beta={a.beta}", f"train.steps={a.steps}", f"train.global_batch={a.batch}",
        f"train.micro_batch={a.batch}", f"train.lr={a.lr}", "train.val_every=0", "train.ckpt_every=0",
        f"train.threads={a.threads}", f"train.seed={a.seed}",
    ]


def _compose(overrides: List[str]):
    register_configs()
    with initialize_config_module("adakd.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def step_prompts(a, cfg) -> List[List[int]]:
    """The prompt ids of the first steps x batch training examples, in the order adakd's trainer draws them."""
    ctx = Context()
    data = run_data(cfg.dataset, ctx)
    tok = get_tokenizer(cfg, data, ctx, roles=("teacher", "student"))
    encoded = encoded_train(cfg.dataset, tok, data, ctx)
    sampler = EpochSampler(len(encoded), int(cfg.train.seed))
    ids = [i for s in range(a.steps) for i in sampler.take(s * a.batch, a.batch)]
    return [prompt_of_example(encoded[i]) for i in ids]


# ------------------------------------------------------------------------------------------------ sides
def run_adakd(a, engine: str = "native") -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="adakd-e2e-") as root:
        cfg = _compose(_overrides(a, root, engine))
        validate_config(cfg)
        job = plan_jobs(cfg)[-1]
        ctx, device = Context(), torch.device("cpu")
        plan = job.plan(device, None)
        seed_everything(int(cfg.train.seed))
        data = run_data(cfg.dataset, ctx)
        tok = get_tokenizer(cfg, data, ctx, roles=plan.roles)
        student, _ = get_student(cfg.model.student, tok, device, for_training=True)
        teacher = Teacher(*get_teacher(cfg, tok, data, ctx, device))   # after the student, as the runner does
        trainer, _ = build_trainer(cfg, plan, student, tok, data, ctx, NullLogger(), teacher=teacher)
        source = trainer.batch_source
        steps: List[Dict[str, float]] = []
        timer = {"sampling_s": 0.0, "trained": 0.0}
        next_batch, one_step = source.next_batch, trainer._one_step

        def timed_sampling(batch, tr):
            t0 = time.perf_counter()
            out = next_batch(batch, tr)
            timer["sampling_s"] += time.perf_counter() - t0
            timer["trained"] += float(out["attention_mask"].sum())  # prompt + response tokens trained on
            return out

        def timed_step(telemetry):
            timer.update(sampling_s=0.0, trained=0.0)
            t0 = time.perf_counter()
            row = one_step(telemetry)
            seconds = time.perf_counter() - t0
            steps.append({"seconds": seconds, "sampling_s": timer["sampling_s"],
                          "sampled_tokens": float(source.step_stats(trainer).get("sampled_tokens", 0.0)),
                          "trained_tokens": timer["trained"], "loss": float(row["loss"]) if row else float("nan")})
            return row

        source.next_batch, trainer._one_step = timed_sampling, timed_step
        base = _rss_mb()
        trainer.train()
        peak = _rss_mb()
        if source is not None:
            source.close()
    return {"steps": steps, "peak_growth_mb": round(peak - base, 1), "peak_rss_mb": round(peak, 1),
            "sampler": engine, "loss_impl": str(cfg.train.loss_impl)}


def run_trl(a) -> Dict[str, Any]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset  # an optional peer's dependency (the [bench] extra brings it with trl)
    from trl import DistillationConfig, DistillationTrainer  # an optional peer (the [bench] extra), trl >= 1.12

    torch.set_num_threads(a.threads)
    cfg = _compose(_overrides(a, tempfile.gettempdir()))
    prompts = step_prompts(a, cfg)
    student_dir, teacher_dir = model_path(str(cfg.model.student.path)), model_path(str(cfg.model.teacher_asset))
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    tok.padding_side = "left"
    texts = [tok.decode(p) for p in prompts]
    same_ids = all(tok(t, add_special_tokens=False)["input_ids"] == p for t, p in zip(texts, prompts))
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    steps: List[Dict[str, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, timer["sampling_s"] = time.perf_counter(), 0.0

        def on_step_end(self, args, state, control, **kw):
            steps.append({"seconds": time.perf_counter() - self.t0, "sampling_s": timer["sampling_s"],
                          "sampled_tokens": timer.pop("sampled", 0.0), "trained_tokens": timer.pop("trained", 0.0)})

    timer: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="trl-e2e-") as out:
        args = DistillationConfig(
            output_dir=out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, max_steps=a.steps,
            learning_rate=a.lr, weight_decay=float(cfg.train.weight_decay), max_grad_norm=float(cfg.train.grad_clip),
            lr_scheduler_type="cosine",  # adakd's schedule (train=world: cosine, no warm-up)
            max_completion_length=a.max_new_tokens, beta=a.beta, temperature=1.0, top_k=0, top_p=1.0,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, gradient_checkpointing=False,
            shuffle_dataset=False, seed=a.seed, dataloader_num_workers=0, disable_tqdm=True)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                      train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tok,
                                      callbacks=[Timer()])
        generate, prepare = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(batch_prompts):
            t0 = time.perf_counter()
            out_ = generate(batch_prompts)
            timer["sampling_s"] += time.perf_counter() - t0
            return out_

        def counted(inputs):
            out_ = prepare(inputs)
            timer["sampled"] = timer.get("sampled", 0.0) + float(out_["completion_mask"].sum())
            timer["trained"] = timer.get("trained", 0.0) + float(out_["prompt_mask"].sum() + out_["completion_mask"].sum())
            return out_

        trainer._generate, trainer._generate_and_score_completions = timed_generate, counted
        base = _rss_mb()
        trainer.train()
        peak = _rss_mb()
    for s, h in zip(steps, [h for h in trainer.state.log_history if "loss" in h]):
        s["loss"] = float(h["loss"])
    return {"steps": steps, "peak_growth_mb": round(peak - base, 1), "peak_rss_mb": round(peak, 1),
            "sampler": "transformers generate", "prompt_ids_round_trip": same_ids}


# --------------------------------------------------------------------------------------------- driver
def vllm_missing() -> Optional[str]:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM not installed in this interpreter (make install-vllm, then run this with .venv-vllm/bin/python)"
    return None


def summarise(res: Dict[str, Any]) -> Dict[str, Any]:
    steps = res["steps"][1:] or res["steps"]  # the first step pays for lazy initialisation
    sec = statistics.median(s["seconds"] for s in steps)
    total = sum(s["seconds"] for s in steps)
    out = {
        "status": "ok",
        "seconds_per_step": round(sec, 4),
        "sampled_tokens_per_s": round(sum(s["sampled_tokens"] for s in steps) / total, 1),
        "sampling_share": round(sum(s["sampling_s"] for s in steps) / total, 3),
        "peak_growth_mb": res["peak_growth_mb"],
        "peak_rss_mb": res["peak_rss_mb"],
        "steps_timed": len(steps),
        "steps_sampled": sum(s["sampled_tokens"] > 0 for s in res["steps"]),  # on-policy: all of them
        "sampled_tokens_by_step": [int(s["sampled_tokens"]) for s in res["steps"]],
        "sampler": res["sampler"],
    }
    trained = [s.get("trained_tokens") for s in steps]
    if all(t is not None for t in trained):
        out["trained_tokens_per_s"] = round(sum(trained) / total, 1)
    out["loss_first_last"] = [round(res["steps"][0].get("loss", float("nan")), 4),
                              round(res["steps"][-1].get("loss", float("nan")), 4)]
    for key in ("prompt_ids_round_trip", "loss_impl"):
        if key in res:
            out[key] = res[key]
    return out


def run_side(a, side: str) -> Dict[str, Any]:
    """One side in a process of its own (a fresh RSS baseline)."""
    if side == "trl":
        missing = peer_missing("trl")
        if missing:
            return {"status": "skipped", "reason": missing}
    if side == "adakd_vllm" and vllm_missing():
        return {"status": "skipped", "reason": vllm_missing()}
    cmd = [sys.executable, "-m", "adakd.bench.e2e", "--worker", side, *a.forward]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout).strip()[-2000:]
        last = err.splitlines()[-1] if err else ""
        if side != "adakd" and last.startswith(("ImportError", "ModuleNotFoundError")):  # a peer that cannot load
            return {"status": "skipped", "reason": f"import failed: {last[:300]}"}
        return {"status": "failed", "error": err}
    res = json.loads(lines[-1])
    return {**summarise(res), **({"version": peer_version("trl")} if side == "trl" else {})}


def dominant(r: Dict[str, Any]) -> str:
    share = r.get("sampling_share")
    if share is None:
        return ""
    return (f"sampling ({share:.0%} of a step)" if share >= 0.5
            else f"training: forward, backward, teacher, loss, optimizer ({1 - share:.0%} of a step)")


def run_benchmark(a) -> Dict[str, Any]:
    t0 = time.time()
    sides = {side: run_side(a, side) for side in SIDES}
    for r in sides.values():
        if r.get("status") == "ok":
            r["dominated_by"] = dominant(r)
    ratios: Dict[str, Any] = {}
    ours = sides["adakd"]
    trl = sides.get("trl", {"status": "skipped", "reason": "not run"})
    if ours.get("status") == "ok" and trl.get("status") == "ok":
        ratios["adakd_vs_trl"] = {
            "status": "ok",
            "seconds_per_step": round(ours["seconds_per_step"] / trl["seconds_per_step"], 3),
            "sampled_tokens_per_s": round(ours["sampled_tokens_per_s"] / trl["sampled_tokens_per_s"], 3),
            "peak_growth": round(ours["peak_growth_mb"] / trl["peak_growth_mb"], 3) if trl["peak_growth_mb"] > 0 else None,
        }
        if "trained_tokens_per_s" in ours and "trained_tokens_per_s" in trl:
            ratios["adakd_vs_trl"]["trained_tokens_per_s"] = round(
                ours["trained_tokens_per_s"] / trl["trained_tokens_per_s"], 3)
    else:
        ratios["adakd_vs_trl"] = {"status": "skipped", "reason": "; ".join(
            f"{k}: {v.get('reason') or v.get('error', '')[:200]}" for k, v in (("adakd", ours), ("trl", trl))
            if v.get("status") != "ok")}
    return {
        "benchmark": "e2e",
        "config": {"pair": "world (shipped 2 x 128 student, 4 x 192 teacher, V = 1024)", "steps": a.steps,
                   "batch": a.batch, "max_new_tokens": a.max_new_tokens, "divergence": "jsd", "beta": a.beta,
                   "lr": a.lr, "threads": a.threads, "seed": a.seed, "quick": a.quick},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "sides": sides,
        "ratios": ratios,
        "wall_s": round(time.time() - t0, 1),
    }


def markdown(result: Dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"On-policy distillation, world pair, {c['steps']} steps of {c['batch']} prompts, up to "
             f"{c['max_new_tokens']} new tokens, jsd beta {c['beta']}, {c['threads']} thread(s); medians over "
             "the steps after the first", "",
             "| side | s / step | sampled tok/s | trained tok/s | sampling share | peak MB (growth / total) | "
             "dominated by |", "|---|---|---|---|---|---|---|"]
    labels = {"adakd": "adakd gkd (lambda 1), native sampler", "trl": "TRL DistillationTrainer, transformers generate",
              "adakd_vllm": "adakd gkd (lambda 1), vLLM sampler"}
    for side, r in result["sides"].items():
        label = labels[side] + (f" [{r['version']}]" if r.get("version") else "")
        if r.get("status") != "ok":
            lines.append(f"| {label} | {r.get('status')}: {r.get('reason') or r.get('error', '')[:200]} | | | | | |")
            continue
        lines.append(f"| {label} | {r['seconds_per_step']:.3g} | {r['sampled_tokens_per_s']:,.0f} | "
                     f"{r.get('trained_tokens_per_s', float('nan')):,.0f} | {r['sampling_share']:.0%} | "
                     f"{r['peak_growth_mb']:,.0f} / {r['peak_rss_mb']:,.0f} | {r['dominated_by']} |")
    lines.append("")
    for name, r in result["ratios"].items():
        if r.get("status") == "ok":
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "status"))
        else:
            lines.append(f"{name}: skipped ({r.get('reason')})")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--quick", action="store_true", help="3 steps of 4 prompts, 32 new tokens")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per side (default 10; --quick 3)")
    p.add_argument("--batch", type=int, default=None, help="prompts per step (default 16, train=world's; --quick 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 64; --quick 32")
    p.add_argument("--beta", type=float, default=0.1, help="JSD teacher weight (GKD's default in adakd)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (train=world's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.steps = a.steps or (3 if a.quick else 10)
    a.batch = a.batch or (4 if a.quick else 16)
    a.max_new_tokens = a.max_new_tokens or (32 if a.quick else 64)
    a.forward = ["--steps", str(a.steps), "--batch", str(a.batch), "--max-new-tokens", str(a.max_new_tokens),
                 "--beta", str(a.beta), "--lr", str(a.lr), "--threads", str(a.threads), "--seed", str(a.seed)]
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        torch.set_num_threads(a.threads)
        res = run_trl(a) if a.worker == "trl" else run_adakd(a, "vllm" if a.worker == "adakd_vllm" else "native")
        print(json.dumps(res), flush=True)
        return 0
    result = run_benchmark(a)
    text = json.dumps(result)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    if not a.json:
        print(markdown(result))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
