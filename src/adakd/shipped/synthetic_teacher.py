"""`make teacher`: rebuild the shipped synthetic teacher with the project's own recipe.

The recipe is conf/model/synthetic.yaml (architecture, seed, fine-tuning schedule) on the synthetic
training split. Training is step-based and seeded, so a rebuild on the same kind of CPU reproduces the
checkpoint; the sha256 of the weights is recorded next to them and checked at every load.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from ..assemble.context import Context
from ..assemble.data import run_data
from ..assemble.identity import finetuned_teacher_dir
from ..assemble.teacher import get_teacher
from ..assemble.tokenizer import get_tokenizer
from ..experiment.config_store import register_configs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="destination (default: the package's assets/synthetic-teacher)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.teacher.finetune.steps=4000")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    register_configs()
    with initialize_config_module("adakd.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=synthetic", "dataset=synthetic", "model.teacher_asset=null",
                                           *args.overrides])
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(str(resources.files("adakd"))) / "assets" / "synthetic-teacher"
    ctx = Context()
    data = run_data(cfg.dataset, ctx)
    tok = get_tokenizer(cfg, data, ctx)
    t0 = time.time()
    get_teacher(cfg, tok, data, ctx, torch.device("cpu"))   # trains into the cache (resumable), then loads
    built = finetuned_teacher_dir(cfg)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out)
    print(f"teacher built in {time.time() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
