"""`make world-models`: build the world miniature's three shipped models (docs/world.md, issue 12).

Stages, each resumable (its work directory keeps the Trainer's checkpoints and a finished stage is reused
when its recipe key matches):

1. the tokenizer: a 1,024-token byte-level BPE (`adakd.models.train_bpe_tokenizer`) trained on the first
   `tokenizer_passages` pretraining passages plus the prompts and first references of the instruction
   training split (`world_tasks.generate_all`, dataset=world's own split). The instruction texts are in on
   purpose: the Alpaca header and the task phrasings then get merges of their own, so prompts stay short
   (dataset.max_prompt_len / max_len drop over-long samples) -- what a real pretrained tokenizer trained on
   web text that contains instruction-like text gives too. Only the training split is used, never a
   benchmark, and the base models themselves are pretrained on prose alone.
2. the two base LMs (`world-teacher-base` 4 x 192, `world-student` 2 x 128): GPT-2s from `model_from_arch`,
   trained by causal LM with the project's `Trainer` (SFT recipe, no teacher) on the prose corpus
   (`world.corpus`, stream "train"): every passage tokenized and ended with EOS, the passages concatenated
   and cut into `seq_len`-token sequences whose labels are the inputs (every position a target).
   Both get one pretraining recipe (same sequences, steps, schedule; only architecture and seeds differ),
   as the members of a model family do; capacity alone makes the teacher base the stronger LM (regime
   criterion: lower held-out LM loss on the "heldout" stream; measured 0.693 vs 0.953 nats/token).
3. the instruction-tuned teacher (`world-teacher`): the config experiment=world composed (as every run composes
   it), `get_teacher` fine-tunes world-teacher-base with conf/model/world.yaml's teacher.finetune into the
   cache `finetuned_teacher_dir(cfg)`, which is copied to the asset; its `recipe_hash` is `teacher_key(cfg)`
   of the config the pipeline composes, so runs use it (checked at the end).

Budget (RECIPE): 50,000 passages (~1.9 M tokens in 7,280 sequences of 256); each base LM 500 steps of
16 x 256 tokens (~1.1 epochs), AdamW lr 1.5e-3 -> 1.5e-4 cosine after 50 warm-up steps, wd 0.01, clip 1.0;
then the fixed fine-tune (conf/model/world.yaml: 8 epochs of 2,000 examples = 1,000 steps). About 23 minutes
on one thread of a loaded 2-core machine (teacher base ~1.1 s/step, student ~0.33 s/step, fine-tune
~0.5 s/step). The student pretrained half as long (250 steps) reached 1.452: the gap does not need it.

Everything is seeded and step-based with a fixed thread count (--threads, recorded in the checkpoints and in
adakd_model.json): a rebuild on the same machine with the same thread count gives the same sha256. The
shipped models are built with one thread (the default), which is also the fastest setting when anything else
runs on a 2-core machine (two threads contending with another process ran ~3x slower per step here).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from .. import runinfo
from ..assemble.context import Context
from ..assemble.data import run_data
from ..assemble.identity import finetuned_teacher_dir, teacher_key
from ..assemble.teacher import get_teacher, shipped_teacher
from ..assemble.tokenizer import get_tokenizer
from ..data import world
from ..data.world import tasks as world_tasks
from ..data.prompts import collate_train
from ..models import (file_sha256, load_tokenizer, model_from_arch, save_model, tokenizer_fingerprint,
                      train_bpe_tokenizer)
from ..schema import TrainConfig
from ..tracking import NullLogger
from ..training.loop import Trainer
from ..training.settings import train_settings
from ..training.validation import dev_losses
from ..experiment.config_store import register_configs

log = logging.getLogger(__name__)

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# The base models' pretraining (conf/model/world.yaml names the architectures; the fine-tune is there too).
RECIPE: Dict[str, Any] = {
    "corpus_passages": 50000,          # stream "train"; ~38 tokens each (~1.9 M tokens)
    "heldout_passages": 1000,          # stream "heldout": the held-out LM loss
    "tokenizer_passages": 20000,
    "tokenizer_vocab": 1024,
    "seq_len": 256,
    "models": {
        "world-teacher-base": {
            "arch": {"n_layer": 4, "n_embd": 192, "n_head": 4, "n_positions": 512, **NO_DROPOUT},
            "init_seed": 1,
            "train": {"steps": 500, "global_batch": 16, "micro_batch": 16, "lr": 1.5e-3, "min_lr": 1.5e-4,
                      "warmup_steps": 50, "weight_decay": 0.01, "schedule": "cosine", "grad_clip": 1.0,
                      "seed": 11, "ckpt_every": 100},
        },
        "world-student": {
            "arch": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 512, **NO_DROPOUT},
            "init_seed": 2,
            "train": {"steps": 500, "global_batch": 16, "micro_batch": 16, "lr": 1.5e-3, "min_lr": 1.5e-4,
                      "warmup_steps": 50, "weight_decay": 0.01, "schedule": "cosine", "grad_clip": 1.0,
                      "seed": 12, "ckpt_every": 100},
        },
    },
}
# --quick: everything shrunk to seconds (tests); the fine-tune too (its own recipe hash, not the pipeline's).
QUICK_CHANGES: Dict[str, Any] = {"corpus_passages": 300, "heldout_passages": 40, "tokenizer_passages": 300,
                                 "seq_len": 64, "steps": 3}
QUICK_OVERRIDES = ["dataset.n_train=16", "dataset.n_dev=4", "dataset.n_test=4", "model.teacher.finetune.epochs=1",
                   "model.teacher.finetune.ckpt_every=0"]
BASES = ("world-teacher-base", "world-student")


def package_assets() -> Path:
    return Path(str(resources.files("adakd"))) / "assets"


def quick_recipe() -> Dict[str, Any]:
    r = json.loads(json.dumps(RECIPE))
    q = QUICK_CHANGES
    r.update({k: q[k] for k in ("corpus_passages", "heldout_passages", "tokenizer_passages", "seq_len")})
    for m in r["models"].values():
        m["train"].update(steps=q["steps"], global_batch=4, micro_batch=4, warmup_steps=0, ckpt_every=0)
    return r


# ------------------------------------------------------------------------------------------- data
def pack(tokenizer, texts: Sequence[str], seq_len: int) -> List[Dict[str, List[int]]]:
    """Passages tokenized, each ended with EOS, concatenated and cut into `seq_len`-token LM examples
    (labels == input_ids: every position is a target; the trainer shifts them). A short tail is dropped."""
    eos = tokenizer.eos_token_id
    stream: List[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return [{"input_ids": stream[i:i + seq_len], "labels": stream[i:i + seq_len]}
            for i in range(0, len(stream) - seq_len + 1, seq_len)]


def lm_loss(model, examples: Sequence[Dict[str, List[int]]], pad_id: int, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over every target of packed LM examples (the dev CE of
    training.validation: labels == input_ids make every position a target)."""
    model.eval()
    cpu = torch.device("cpu")
    losses = dev_losses(model, None, None, examples, pad_id=pad_id, device=cpu, teacher_device=cpu,
                        autocast=lambda _device: contextlib.nullcontext(), batch_size=batch, chunk_size=1024)
    return losses["ce_sum"] / max(1, losses["tokens"])


def corpus_examples(tokenizer, recipe: Dict[str, Any], world_spec: Dict[str, Any], stream: str):
    """The packed pretraining ("train") or held-out ("heldout") sequences."""
    w = world.build_world(world.WorldSpec.from_dict(world_spec))
    n = recipe["corpus_passages" if stream == "train" else "heldout_passages"]
    return pack(tokenizer, world.corpus(w, int(n), stream=stream), int(recipe["seq_len"]))


# ----------------------------------------------------------------------------------------- stages
def digest(items: Sequence[Any]) -> str:
    """Content digest of a stage's input data (texts or token sequences): a changed generator invalidates it."""
    h = hashlib.sha256()
    for x in items:
        h.update(json.dumps(x).encode())
    return h.hexdigest()[:16]


def _fresh_stage(work: Path, key: Dict[str, Any], data: str) -> str:
    """The stage's work directory is kept only if it was made by the same recipe key from the same data
    (digest); the recipe's hash."""
    h = runinfo.config_hash(key)
    stamp = work / "stage_key.json"
    if work.exists():
        old = json.loads(stamp.read_text()) if stamp.exists() else {}
        if (old.get("hash"), old.get("data")) != (h, data):
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": h, "data": data, "key": key}, indent=2))
    return h


def build_tokenizer(recipe: Dict[str, Any], dataset: Dict[str, Any], work: Path):
    key = {"passages": recipe["tokenizer_passages"], "vocab": recipe["tokenizer_vocab"], "dataset": dataset}
    w = world.build_world(world.WorldSpec.from_dict(dataset["world"]))
    texts = world.corpus(w, int(recipe["tokenizer_passages"]), stream="train")
    g = world_tasks.generate_all(dataset["world"], int(dataset["n_train"]), 0, 0, int(dataset["seed"]))
    texts += [t for ex in g["train"] for t in (ex.prompt, ex.references[0])]
    _fresh_stage(work, key, digest(texts))
    out = work / "tokenizer"
    if (out / "tokenizer.json").exists():
        return load_tokenizer(str(out))
    return train_bpe_tokenizer(texts, int(recipe["tokenizer_vocab"]), out)


def pretrain(name: str, recipe: Dict[str, Any], world_spec: Dict[str, Any], tokenizer, train: Sequence[dict],
             heldout: Sequence[dict], work: Path, out: Path, threads: int, progress: bool) -> Dict[str, Any]:
    """One base LM: causal-LM pretraining with the project's Trainer, saved with its recipe and figures."""
    spec = recipe["models"][name]
    key = {"model": spec, "corpus": {"world": world_spec, **{k: recipe[k] for k in ("corpus_passages", "seq_len")}},
           "tokenizer": tokenizer_fingerprint(tokenizer), "threads": threads}
    h = _fresh_stage(work, key, digest([e["input_ids"] for e in train]))
    done = work / "model"
    if not (done / "adakd_model.json").exists():
        model = model_from_arch(spec["arch"], len(tokenizer), int(spec["init_seed"]), tokenizer.eos_token_id)
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"device": "cpu", "threads": threads},
                              spec["train"])
        method = OmegaConf.create({"name": f"{name}-pretrain", "divergence": "none", "recipe": "sft",
                                   "kd_ratio": 0.0})
        log.info("pretraining %s (%d steps of %d x %d tokens)", name, cfg.steps, cfg.global_batch,
                 recipe["seq_len"])
        trainer = Trainer(train_settings(cfg, total_steps=int(cfg.steps), method=method, progress=progress),
                          student=model, teacher=None, train_data=list(train),
                          collate=lambda b: collate_train(b, tokenizer.pad_token_id), objective=None,
                          run_dir=work / "run", logger=NullLogger(), device=torch.device("cpu"))
        result = trainer.train()
        loss = lm_loss(model, heldout, tokenizer.pad_token_id)
        extra = {"name": name, "recipe_hash": h, "recipe": key, "seed": spec["init_seed"],
                 "train_seed": spec["train"]["seed"], "steps": result.steps, "final_loss": result.final_loss,
                 "heldout_lm_loss": loss, "heldout_tokens": sum(len(e["input_ids"]) - 1 for e in heldout),
                 "train_sequences": len(train), "threads": threads}
        save_model(model, tokenizer, done, extra=extra)
        shutil.copy(work / "run" / "train_log.jsonl", done / "train_log.jsonl")
    _replace(done, out / name)
    return json.loads((out / name / "adakd_model.json").read_text())


def _replace(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def compose_world(overrides: Sequence[str]):
    register_configs()
    with initialize_config_module("adakd.conf", version_base="1.3"):
        return compose("config", overrides=["experiment=world", *overrides])


def finetune(out: Path, work: Path, threads: int, quick: bool, progress: bool) -> Dict[str, Any]:
    """world-teacher: world-teacher-base fine-tuned by the pipeline's own teacher recipe, copied to the asset
    with the recipe hash of the config runs compose."""
    base = out / "world-teacher-base"
    common = [*(QUICK_OVERRIDES if quick else []), "train.device=cpu", f"train.threads={threads}",
              f"run.progress={str(progress).lower()}"]
    in_package = out.resolve() == package_assets().resolve()
    # Outside the package, `builtin:world-*` are not this build's models: point the fine-tune at them.
    where = [] if in_package else [f"model.teacher.path={base}", f"model.student.path={out / 'world-student'}"]
    # The fine-tune cache is keyed by the recipe, not by the base's weights: one cache per base checksum.
    root = work / f"finetune-{file_sha256(base / 'model.safetensors')[:16]}"
    cfg = compose_world([*common, *where, "model.teacher_asset=null", f"run.output_root={root}"])
    ctx = Context()
    data = run_data(cfg.dataset, ctx)
    tok = get_tokenizer(cfg, data, ctx)
    get_teacher(cfg, tok, data, ctx, torch.device("cpu"))   # fine-tunes into the cache (resumable), loads it
    dst = out / "world-teacher"
    _replace(finetuned_teacher_dir(cfg), dst)
    # The recipe hash runs look for: the config as composed by a run (builtin paths), this build's options.
    asset = [] if in_package else [f"model.teacher_asset={dst}"]
    run_cfg = compose_world([*common, *asset, f"run.output_root={root}"])
    info_path = dst / "adakd_model.json"
    info = json.loads(info_path.read_text())
    if info["recipe_hash"] != teacher_key(run_cfg):
        info["recipe_hash"] = teacher_key(run_cfg)
        info["recipe"] = OmegaConf.to_container(run_cfg.model.teacher, resolve=True)
        info["built_from"] = str(base)
        info_path.write_text(json.dumps(info, indent=2, default=str))
    if shipped_teacher(run_cfg) is None:
        raise RuntimeError(f"{dst}: its recipe hash does not match the composed config's teacher_key")
    return info


# ------------------------------------------------------------------------------------------ main
def build(out: Path, work: Path, threads: int, quick: bool = False, progress: bool = True) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    recipe = quick_recipe() if quick else RECIPE
    cfg = compose_world(QUICK_OVERRIDES if quick else [])   # the world and its split: conf/dataset/world.yaml
    dataset = {"world": OmegaConf.to_container(cfg.dataset.world, resolve=True), "n_train": int(cfg.dataset.n_train),
               "seed": int(cfg.dataset.seed)}
    if int(recipe["tokenizer_vocab"]) != int(cfg.model.tokenizer_vocab):
        raise RuntimeError("RECIPE['tokenizer_vocab'] differs from conf/model/world.yaml's model.tokenizer_vocab")
    out.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}
    t = time.time()
    tok = build_tokenizer(recipe, dataset, work / "tokenizer")
    train = corpus_examples(tok, recipe, dataset["world"], "train")
    heldout = corpus_examples(tok, recipe, dataset["world"], "heldout")
    times["tokenizer+corpus"] = time.time() - t
    log.info("corpus: %d sequences of %d tokens; held-out: %d", len(train), recipe["seq_len"], len(heldout))
    infos = {}
    for name in BASES:
        t = time.time()
        infos[name] = pretrain(name, recipe, dataset["world"], tok, train, heldout, work / name, out, threads, progress)
        times[name] = time.time() - t
    t = time.time()
    infos["world-teacher"] = finetune(out, work, threads, quick, progress)
    times["world-teacher"] = time.time() - t
    summary = {"out": str(out), "threads": threads, "quick": quick, "seconds": {k: round(v, 1) for k, v in times.items()},
               "total_seconds": round(sum(times.values()), 1),
               "heldout_lm_loss": {n: infos[n]["heldout_lm_loss"] for n in BASES},
               "sha256": {n: file_sha256(out / n / "model.safetensors") for n in (*BASES, "world-teacher")}}
    return summary


def print_summary(s: Dict[str, Any]) -> None:
    print(f"\nworld models -> {s['out']} ({s['threads']} thread(s){', quick' if s['quick'] else ''})")
    for name, loss in s["heldout_lm_loss"].items():
        print(f"  held-out LM loss {name:<20} {loss:.4f} nats/token (ppl {math.exp(loss):.3f})")
    for stage, sec in s["seconds"].items():
        print(f"  {stage:<38} {sec:7.1f} s")
    print(f"  {'total':<38} {s['total_seconds']:7.1f} s")
    for name, h in s["sha256"].items():
        print(f"  sha256 {name:<20} {h}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="destination of the three model directories "
                                                "(default: the package's assets)")
    ap.add_argument("--work", default="outputs/world-build", help="checkpoints and caches (resumable)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (the checksums depend on it; the shipped models: 1)")
    ap.add_argument("--quick", action="store_true", help="everything shrunk to seconds (tests)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out) if args.out else package_assets()
    summary = build(out, Path(args.work), args.threads, args.quick, progress=not args.no_progress)
    print_summary(summary)
    (Path(args.work) / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
