"""`make gpu-check`: KD training steps at GPT-2 scale on a GPU, plain KD vs AdaKD -- step time, tokens/s, peak memory.

    python -m adakd.bench.gpu_check                  # GPU: teacher GPT-2-XL-sized, student GPT-2-base-sized
    python -m adakd.bench.gpu_check --cpu-smoke      # tiny sizes on CPU: checks the script works (tests)

Teacher 48 x 1600 (GPT-2 XL shape, 1.56B) in bf16, eval mode, no grad; student 12 x 768 (GPT-2 base shape,
124M) in fp32 master weights under bf16 autocast, AdamW; both randomly initialised from GPT2Config
(vocab 50257), sequences of 512 tokens whose second half is the response. One step = student forward,
teacher forward, KD objective on the response tokens, backward, clip, optimizer step -- the training
loop's own code path (adakd.train.hidden_at / head_logits, adakd.objective). Rows: `kd` (reverse KL,
no token selection, constant temperature) and `adakd` (reverse KL + LATF at its steady-state ratio 0.75 + IDTS),
each with the chunked and the fused loss implementation. Times: median over the timed steps after warm-up.
The batch halves on out-of-memory until it fits. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from typing import Any, Dict, List

import torch

from transformers import GPT2Config, GPT2LMHeadModel

from adakd.kd.objective import HiddenStates, build_objective
from adakd.models import lm_parts
from adakd.schema import AdakdConfig, MethodConfig
from adakd.training.forward import head_logits, hidden_at, response_positions

SIZES = {
    "gpu": {"teacher": dict(n_layer=48, n_embd=1600, n_head=25), "student": dict(n_layer=12, n_embd=768, n_head=12),
            "vocab": 50257, "seq": 512, "batch": 8, "steps": 10, "warmup": 3},
    "cpu-smoke": {"teacher": dict(n_layer=2, n_embd=64, n_head=2), "student": dict(n_layer=1, n_embd=32, n_head=2),
                  "vocab": 512, "seq": 32, "batch": 2, "steps": 2, "warmup": 1},
}


TEACHER_DTYPE: List[Any] = [None]   # --teacher-dtype


def _objective(kind: str, impl: str, total_steps: int):
    if kind == "kd":
        adakd = AdakdConfig(name="none", latf=False, idts=False)
    else:   # AdaKD at its steady state: LATF keeps 75 % of the tokens, IDTS on
        adakd = AdakdConfig(name="bench", latf=True, idts=True, ratio_schedule="fixed", ratio_end=0.75)
    return build_objective(MethodConfig(name="rkl", divergence="rkl"), adakd, total_steps=total_steps, impl=impl)


def _models(size: Dict[str, Any], device: torch.device, teacher_dtype: torch.dtype):
    def build(arch, seed):
        cfg = GPT2Config(vocab_size=size["vocab"], n_positions=max(1024, size["seq"]), resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, **arch)
        torch.manual_seed(seed)
        with torch.device(device):
            return GPT2LMHeadModel(cfg)
    teacher = build(size["teacher"], 1).to(teacher_dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build(size["student"], 2).train()
    return teacher, student


def _batch(size: Dict[str, Any], batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, size["vocab"], (batch, size["seq"]), generator=g)
    labels = ids.clone()
    labels[:, : size["seq"] // 2] = -100   # the prompt half is not trained on
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(kind: str, impl: str, size: Dict[str, Any], batch: int, device: torch.device, amp) -> Dict[str, Any]:

    teacher, student = _models(size, device, TEACHER_DTYPE[0] or (torch.bfloat16 if device.type == "cuda" else torch.float32))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    obj = _objective(kind, impl, total_steps=size["warmup"] + size["steps"])
    ids, attn, labels = _batch(size, batch, device)
    targets, mask = response_positions(labels)
    tgt = targets[mask]

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast():
            h_s = hidden_at(student, ids, attn, mask)
        with torch.no_grad(), autocast():
            h_t = hidden_at(teacher, ids, attn, mask)
        if impl == "fused":
            _, s_head = lm_parts(student)
            _, t_head = lm_parts(teacher)
            loss, _ = obj(HiddenStates(h_s[None].float(), s_head.weight),
                          HiddenStates(h_t[None].to(t_head.weight.dtype), t_head.weight), tgt[None])
        else:
            with autocast():
                s_logits = head_logits(student, h_s)
                with torch.no_grad():
                    t_logits = head_logits(teacher, h_t)
            loss, _ = obj(s_logits[None], t_logits[None], tgt[None])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.step_end(float(loss.detach()))
        _sync(device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)}")
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(size["warmup"]):
        step()
    times = [step() for _ in range(size["steps"])]
    tokens = batch * size["seq"]
    med = statistics.median(times)
    out = {"loss": kind, "impl": impl, "batch": batch, "seq": size["seq"], "tokens_per_step": tokens,
           "response_tokens_per_step": int(mask.sum()), "step_s_median": round(med, 4),
           "step_s_min": round(min(times), 4), "tokens_per_s": round(tokens / med, 1)}
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 1024 ** 3, 2)
    return out   # models and optimizer are freed with this frame (main() then empties the CUDA cache)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (checks that the script works)")
    p.add_argument("--batch", type=int, default=None, help="micro batch (default 8 on GPU; halves on OOM)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row")
    p.add_argument("--impls", default="chunked,fused", help="loss implementations to time")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (smoke)")
    p.add_argument("--teacher-dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="teacher weights (default bfloat16 on GPU, float32 on CPU)")
    args = p.parse_args(argv)
    TEACHER_DTYPE[0] = getattr(torch, args.teacher_dtype) if args.teacher_dtype else None

    size = dict(SIZES["cpu-smoke" if args.cpu_smoke else "gpu"])
    if args.steps:
        size["steps"] = args.steps
    if args.cpu_smoke:
        device, amp = torch.device("cpu"), None
        torch.set_num_threads(args.threads or 1)
    else:
        if not torch.cuda.is_available():
            print(json.dumps({"status": "no-gpu", "error": "no CUDA device; use --cpu-smoke on CPU"}))
            return 2
        device = torch.device("cuda")
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    batch = args.batch or size["batch"]
    rows, errors = [], []
    for impl in [s for s in args.impls.split(",") if s]:
        for kind in ("kd", "adakd"):
            b = batch
            while True:
                try:
                    rows.append(run_config(kind, impl, size, b, device, amp))
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    break
                except torch.OutOfMemoryError:
                    gc.collect()
                    torch.cuda.empty_cache()
                    if b == 1:
                        errors.append({"loss": kind, "impl": impl, "error": "out of memory at batch 1"})
                        break
                    b //= 2
    by = {(r["loss"], r["impl"]): r for r in rows}
    overhead = {impl: round(by[("adakd", impl)]["step_s_median"] / by[("kd", impl)]["step_s_median"], 3)
                for impl in args.impls.split(",") if ("kd", impl) in by and ("adakd", impl) in by}
    result = {
        "status": "ok" if rows and not errors else "error",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})",
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "teacher": {**size["teacher"], "dtype": str(TEACHER_DTYPE[0] or (torch.bfloat16 if device.type == "cuda"
                                                                          else torch.float32)).replace("torch.", "")},
        "student": size["student"], "vocab": size["vocab"],
        "rows": rows, "errors": errors, "adakd_over_kd_step_time": overhead,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
