"""Teacher cache benchmark: how far the top-k cache is from the live teacher, how much faster a training
step gets, and how much disk it takes.

    python -m adakd.bench.teacher_cache --json            # synthetic pair (+ SmolLM2 if made: `make models`)
    python -m adakd.bench.teacher_cache --quick --json    # fewer tokens and steps

Fidelity (per setup, per k): response tokens of held-out examples; student and teacher logits computed
once; the cache's view of the teacher is `topk_from_logits` rounded exactly as stored (fp16 log-probs,
fp32 tail). Reported:
  loss_rel_err[div]   |mean_cache - mean_live| / mean_live of the plain per-token divergence
  adakd_rel_err[tail] the same for rkl + AdaKD (LATF at r = 0.75, IDTS c = 0.5) per teacher-tail mode
  adakd_grad_cos      cosine between the student-logit gradients of that loss, cache vs live
  hellinger_mae/max   |s_cache - s_live| of the Hellinger difficulty; hellinger_spearman: rank correlation
  overlap@r           |kept_cache ∩ kept_live| / |kept| of the LATF selection at ratio r
  topk_mass           mean teacher probability mass inside the top-k
Setups: the shipped synthetic teacher (4 x 128, V = 1024) on the synthetic dev split with (a) a student
made by dropping every 2nd teacher block, (b) a randomly initialised student of the configured shape, (c)
`--trained-student DIR` if given; SmolLM2-135M-Instruct (V = 49152) with its 15-block pruned student on
Dolly dev prompts, when outputs/models/smollm2-135m-instruct exists (or --real-model DIR).

Speed: one optimizer step (student forward + backward, AdaKD rkl) with the live teacher vs the cache,
alternated on the same batches, after one warm-up step each; median of the per-pair ratios.
Disk: 6k + 4 bytes per response token (int32 ids, fp16 log-probs, fp32 tail), and a measured build.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from omegaconf import OmegaConf

from adakd.data import collate_train, encode_example, load_benchmark, synthetic
from adakd.data.prompts import apply_chat_template
from adakd.kd.adaptive import DifficultyMetric
from adakd.kd.losses import per_token
from adakd.kd.adaptive.difficulty import BucketMetric
from adakd.kd.losses.sparse import FORMS, TeacherTopK, dense_teacher, topk_from_logits
from adakd.kd.losses.sparse import per_token as sparse_per_token
from adakd.kd.objective import build_objective, select_tokens
from adakd.models import lm_parts, load_pretrained, load_tokenizer, model_from_arch
from adakd.models.pruning import prune_layers
from adakd.schema import AdakdConfig, MethodConfig, TrainConfig
from adakd.tracking import NullLogger
from adakd.training.forward import head_logits, hidden_at, response_positions
from adakd.training.loop import Trainer
from adakd.training.settings import train_settings
from adakd.training.teachers import CachedTeacher
from adakd.training.topk_cache import build, bytes_per_token, TeacherCache

KS = (8, 32, 128, 512)
DIVS = {"fkl": {}, "rkl": {}, "jsd": {"beta": 0.1}, "tvd": {}, "sfkl": {"alpha": 0.1}, "srkl": {"alpha": 0.1},
        "abkd": {"alpha": 0.2, "beta": 0.7}, "akl": {"mu": 0.5}}
TAILS = ("student", "uniform", "atom")


# --------------------------------------------------------------------------------------------- setups
def _synthetic_setup(n: int, trained: str | None) -> dict[str, Any]:

    asset = Path(str(resources.files("adakd") / "assets" / "synthetic-teacher"))
    tok = load_tokenizer(str(asset))
    teacher = load_pretrained(str(asset)).eval()
    dev = synthetic.generate("dev", n, 0)
    train = synthetic.generate("train", max(4 * n, 64), 0)
    def enc(exs):
        return [e for e in (encode_example(tok, x.prompt, x.references[0], max_prompt_len=96, max_len=128)
                            for x in exs) if e is not None]
    arch = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0}
    students = {"pruned (every 2nd block)": prune_layers(teacher, every_k=2).eval(),
                "random init (2x64)": model_from_arch(arch, len(tok), 2, tok.eos_token_id).eval()}
    if trained:
        students["trained student"] = load_pretrained(trained).eval()
    return {"name": "synthetic teacher 4x128, V=1024, synthetic dev", "tok": tok, "teacher": teacher,
            "students": students, "dev": enc(dev), "train": enc(train), "speed_student": students["random init (2x64)"],
            "micro_batch": 32}


def _real_setup(path: str, n: int) -> dict[str, Any] | None:

    root = os.environ.get("ADAKD_DATA_DIR") or str(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    if not (Path(path) / "config.json").exists() or not (Path(root) / "dolly" / "dev.jsonl").exists():
        return None
    tok = load_tokenizer(path)
    teacher = load_pretrained(path).eval()
    student = prune_layers(teacher, every_k=2).eval()
    exs = load_benchmark("dolly", root, split="dev")

    def enc(items):
        out = []
        for x in items:
            e = encode_example(tok, apply_chat_template(tok, x.prompt), x.references[0], max_prompt_len=128,
                               max_len=256, add_special_tokens=False)
            if e is not None:
                out.append(e)
        return out
    return {"name": "SmolLM2-135M-Instruct -> pruned 15 blocks, V=49152, Dolly dev", "tok": tok, "teacher": teacher,
            "students": {"pruned (every 2nd block)": student}, "dev": enc(exs[:n]), "train": enc(exs[n:n + 16]),
            "speed_student": student, "micro_batch": 4}


# ------------------------------------------------------------------------------------------- fidelity
@torch.no_grad()
def _logits(model, examples, pad_id, batch=16):
    out, tgts = [], []
    for i in range(0, len(examples), batch):
        b = collate_train(examples[i:i + batch], pad_id)
        targets, mask = response_positions(b["labels"])
        out.append(head_logits(model, hidden_at(model, b["input_ids"], b["attention_mask"], mask)).float())
        tgts.append(targets[mask])
    return torch.cat(out), torch.cat(tgts)


def _stored(top):
    """The cache's storage rounding: fp16 log-probabilities, fp32 tail."""
    return TeacherTopK(top.ids, top.logprobs.half().float(), top.tail.float())


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _plain(name, params, s, teacher, form: str | None):
    """(mean per-token divergence, its gradient w.r.t. the student logits, flattened). form None: live
    logits; "dense": the rebuilt teacher rows; "buckets": k + 1 buckets."""
    x = s.clone().requires_grad_(True)
    if form == "buckets":
        loss = sparse_per_token(name, x, teacher, **params).mean()
    else:
        t = dense_teacher(teacher, s.shape[-1]) if form == "dense" else teacher
        loss = per_token(name, x, t, **params).mean()
    loss.backward()
    return float(loss.detach()), x.grad.flatten().double()


def _adakd(s, teacher, tgt, form: str | None, tail: str = "student", divergence: str = "rkl"):
    obj = build_objective(MethodConfig(divergence=divergence), AdakdConfig(ratio_schedule="fixed", ratio_end=0.75),
                          total_steps=1, teacher_cache={"form": form or "dense", "tail": tail})
    x = s.clone().requires_grad_(True)
    if form is None:
        loss, _ = obj(x[None], teacher[None], tgt[None])
    else:
        loss, _ = obj(x[None], teacher.unsqueeze(0), tgt[None])
    loss.backward()
    return float(loss.detach()), x.grad.flatten().double()


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def fidelity(setup: dict[str, Any], ks: Sequence[int], ratios=(0.75, 0.5)) -> list[dict[str, Any]]:

    pad = setup["tok"].pad_token_id if setup["tok"].pad_token_id is not None else setup["tok"].eos_token_id
    t, tgt = _logits(setup["teacher"], setup["dev"], pad)
    rows = []
    for sname, student in setup["students"].items():
        s, _ = _logits(student, setup["dev"], pad)
        v = min(s.shape[-1], t.shape[-1])
        s_, t_ = s[:, :v], t[:, :v]
        live = {d: _plain(d, p, s_, t_, None) for d, p in DIVS.items()}
        hel = DifficultyMetric("hellinger")
        h_live = hel.rows(s_, t_)
        a_live, g_live = _adakd(s_, t_, tgt, None)
        f_live, gf_live = _adakd(s_, t_, tgt, None, divergence="fkl")
        n = h_live.numel()
        for k in ks:
            if k >= v:
                continue
            top = _stored(topk_from_logits(t_, k))
            for form in FORMS:
                row: dict[str, Any] = {"setup": setup["name"], "student": sname, "k": k, "form": form, "tokens": n,
                                       "vocab": v, "topk_mass": float((1 - top.tail.exp()).mean())}
                for d, p in DIVS.items():
                    c, g = _plain(d, p, s_, top, form)
                    row[f"loss_rel_err_{d}"] = _rel(c, live[d][0])
                    row[f"grad_cos_{d}"] = _cos(g, live[d][1])
                a_c, g_c = _adakd(s_, top, tgt, form)
                row["adakd_rel_err"], row["adakd_grad_cos"] = _rel(a_c, a_live), _cos(g_c, g_live)
                if form == "buckets":   # the teacher-tail approximations under IDTS temperatures
                    for tail in TAILS:
                        row[f"adakd_rel_err_{tail}"] = _rel(_adakd(s_, top, tgt, form, tail=tail)[0], a_live)
                f_c, gf_c = _adakd(s_, top, tgt, form, divergence="fkl")
                row["adakd_fkl_rel_err"], row["adakd_fkl_grad_cos"] = _rel(f_c, f_live), _cos(gf_c, gf_live)
                h_c = BucketMetric(hel).rows(s_, top) if form == "buckets" else hel.rows(s_, dense_teacher(top, v))
                row["hellinger_mae"] = float((h_c - h_live).abs().mean())
                row["hellinger_max"] = float((h_c - h_live).abs().max())
                row["hellinger_mean_live"] = float(h_live.mean())
                row["hellinger_spearman"] = _spearman(h_c, h_live)
                for r in ratios:
                    kk = max(1, int(r * n))
                    a = set(select_tokens(h_live, kk).tolist())
                    b = set(select_tokens(h_c, kk).tolist())
                    row[f"overlap@{r}"] = len(a & b) / kk
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- speed
def speed(setup: dict[str, Any], k: int, steps: int, tmp: Path) -> dict[str, Any]:
    tok, teacher, data = setup["tok"], setup["teacher"], setup["train"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    mb = setup["micro_batch"]
    v = min(int(lm_parts(m)[1].weight.shape[0]) for m in (teacher, setup["speed_student"]))
    t0 = time.perf_counter()
    path = build(teacher, data, tmp / f"cache-{k}", k=min(k, v - 1), vocab=v, pad_id=pad, batch_size=mb)
    build_s = time.perf_counter() - t0
    cache = TeacherCache(path)
    tcfg = OmegaConf.structured(TrainConfig(global_batch=mb, micro_batch=mb, steps=10 ** 6, lr=1e-4))
    method = OmegaConf.structured(MethodConfig(divergence="rkl"))

    settings = train_settings(tcfg, total_steps=10 ** 6, method=method, progress=False)

    def common(name):
        return {"student": copy.deepcopy(setup["speed_student"]).train(), "train_data": data,
                "collate": lambda b: collate_train(b, pad), "logger": NullLogger(), "device": torch.device("cpu"),
                "run_dir": tmp / name, "objective": build_objective(method, AdakdConfig(), total_steps=10 ** 6)}
    live = Trainer(settings, teacher=teacher, **common("live"))
    cached = Trainer(settings, teacher=CachedTeacher(cache), **common("cached"))
    for tr in (live, cached):
        tr.run_dir.mkdir(parents=True, exist_ok=True)
        tr._one_step(False)   # warm-up
    times = {"live": [], "cache": []}
    for _ in range(steps):
        for name, tr in (("live", live), ("cache", cached)):
            t0 = time.perf_counter()
            tr._one_step(False)
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["live"], times["cache"])]
    tokens = sum(len([x for x in e["labels"][1:] if x != -100]) for e in data)
    return {"setup": setup["name"], "k": cache.k, "micro_batch": mb, "steps": steps,
            "live_step_s": statistics.median(times["live"]), "cache_step_s": statistics.median(times["cache"]),
            "speedup": statistics.median(ratios), "cache_build_s": round(build_s, 3),
            "cache_tokens": cache.n_tokens, "cache_bytes": cache.disk_bytes, "train_tokens": tokens,
            "measured_mb_per_million_tokens": cache.disk_bytes / cache.n_tokens * 1e6 / 2 ** 20}


def disk_table(ks: Sequence[int]) -> list[dict[str, Any]]:
    return [{"k": k, "bytes_per_token": bytes_per_token(k),
             "mb_per_million_tokens": round(bytes_per_token(k) * 1e6 / 2 ** 20, 1)} for k in ks]


# --------------------------------------------------------------------------------------------- output
def markdown(result: dict[str, Any]) -> str:
    def pct(x):
        return f"{100 * x:.2g}%"

    def short(r):
        return f"{r['setup'].split(',')[0]} / {r['student']} | {r['k']} | {r['form']}"

    lines = ["### Fidelity of the top-k teacher cache vs the live teacher: plain divergences", "",
             "relative error of the mean loss, and (below) cosine of the student-logit gradients, cache vs live", "",
             "| setup / student | k | form | top-k mass | " + " | ".join(DIVS) + " |",
             "|---|---|---|---|" + "---|" * len(DIVS)]
    for r in result["fidelity"]:
        lines.append(f"| {short(r)} | {r['topk_mass']:.3f} | "
                     + " | ".join(pct(r[f"loss_rel_err_{d}"]) for d in DIVS) + " |")
    lines += ["", "| setup / student | k | form | grad cos " + " | ".join(DIVS) + " |",
              "|---|---|---|" + "---|" * len(DIVS)]
    for r in result["fidelity"]:
        lines.append(f"| {short(r)} | " + " | ".join(f"{r[f'grad_cos_{d}']:.4f}" for d in DIVS) + " |")
    lines += ["", "### AdaKD (LATF r = 0.75, IDTS), Hellinger difficulty and LATF selection from the cache", "",
              "| setup / student | k | form | AdaKD-rkl rel. err. (buckets: tail student / uniform / atom) | "
              "grad cos | AdaKD-fkl rel. err. | grad cos | Hellinger MAE (max) | Spearman | overlap@0.75 | "
              "overlap@0.5 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["fidelity"]:
        err = (" / ".join(pct(r[f"adakd_rel_err_{t}"]) for t in TAILS) if r["form"] == "buckets"
               else pct(r["adakd_rel_err"]))
        lines.append(f"| {short(r)} | {err} | {r['adakd_grad_cos']:.4f} | {pct(r['adakd_fkl_rel_err'])} | "
                     f"{r['adakd_fkl_grad_cos']:.4f} | {r['hellinger_mae']:.2g} ({r['hellinger_max']:.2g}) | "
                     f"{r['hellinger_spearman']:.4f} | {r['overlap@0.75']:.3f} | {r['overlap@0.5']:.3f} |")
    lines += ["", "### Training step: live teacher vs cache (form dense)", "",
              "| setup | k | micro-batch | live s/step | cache s/step | speedup | build s | MB per 1M tokens |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(f"| {r['setup']} | {r['k']} | {r['micro_batch']} | {r['live_step_s']:.3f} | "
                     f"{r['cache_step_s']:.3f} | {r['speedup']:.2f}x | {r['cache_build_s']:.2f} | "
                     f"{r['measured_mb_per_million_tokens']:.0f} |")
    lines += ["", "### Disk", "", "| k | bytes/token | MB per 1M tokens |", "|---|---|---|"]
    for r in result["disk"]:
        lines.append(f"| {r['k']} | {r['bytes_per_token']} | {r['mb_per_million_tokens']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON (else markdown)")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and steps")
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--speed-k", type=int, default=256)
    ap.add_argument("--trained-student", default=None, help="a trained synthetic student (a run's model/ dir)")
    ap.add_argument("--real-model", default=str(Path("outputs/models/smollm2-135m-instruct")))
    ap.add_argument("--no-real", action="store_true", help="skip the SmolLM2 setup")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ks = [int(x) for x in args.ks.split(",") if x]
    n_dev = 48 if args.quick else 200
    steps = args.steps or (3 if args.quick else 8)
    setups = [_synthetic_setup(n_dev, args.trained_student)]
    if not args.no_real:
        real = _real_setup(args.real_model, 4 if args.quick else 12)
        if real is not None:
            setups.append(real)
    result: dict[str, Any] = {"host": platform.node(), "threads": args.threads, "torch": torch.__version__,
                              "fidelity": [], "speed": [], "disk": disk_table(sorted(set(ks + [args.speed_k])))}
    with tempfile.TemporaryDirectory() as tmp:
        for i, st in enumerate(setups):
            result["fidelity"] += fidelity(st, ks + ([2048] if st["teacher"].config.vocab_size > 10000 else []))
            n_steps = steps if "SmolLM2" not in st["name"] else max(2, steps // 3)
            result["speed"].append(speed(st, args.speed_k, n_steps, Path(tmp) / f"setup{i}"))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text if args.json else markdown(result), flush=True)
    return result


if __name__ == "__main__":
    main()
