"""Worker of tests/test_distributed.py: tiny KD training through adakd.train.Trainer, one or more processes.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py --out DIR
    python tests/dist_worker.py --out DIR --micro-batch 4          # one process, accumulation 2

Under torchrun it joins the gloo group from the environment (adakd.distributed.init_from_env) and runs
plain data parallel (`dp`), then FSDP (`fsdp`: interrupted after STOP_AT steps with a checkpoint, then
resumed by a fresh Trainer). Rank 0 writes <mode>.json with the per-step global loss. Everything is built
from seeds (random token sequences, tiny GPT-2s from config), so all runs see the same data and weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

STEPS = 6
STOP_AT = 3
GLOBAL_BATCH = 8
VOCAB = 96


class _Stop(Exception):
    pass


def data(n: int = 64, seed: int = 0):
    """Encoded examples: prompt tokens (label -100) then response tokens, varied lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p_len = 3 + int(torch.randint(0, 6, (1,), generator=g))
        r_len = 2 + int(torch.randint(0, 8, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (p_len + r_len,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p_len + ids[p_len:]})
    return out


def models():
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(n_layer, n_embd, seed):
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=2,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg)
    teacher = build(2, 32, 1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, build(2, 16, 2)


def train(run_dir: Path, micro_batch: int, world_size: int, rank: int, fsdp: bool = False,
          stop_at: int | None = None):
    from omegaconf import OmegaConf

    from adakd.data import collate_train
    from adakd.kd.objective import build_objective
    from adakd.schema import TrainConfig
    from adakd.schema import AdakdConfig, MethodConfig
    from adakd.tracking import NullLogger
    from adakd.training.loop import Trainer
    from adakd.training.settings import train_settings

    teacher, student = models()
    if fsdp:
        from adakd.training.distributed import wrap_fsdp
        student = wrap_fsdp(student, device=torch.device("cpu"))
    cfg = OmegaConf.structured(TrainConfig(steps=STEPS, global_batch=GLOBAL_BATCH, micro_batch=micro_batch,
                                           lr=2e-2, min_lr=1e-3, warmup_steps=0, ckpt_every=0, seed=10,
                                           log_every=1))
    method = OmegaConf.structured(MethodConfig(name="rkl", divergence="rkl", kd_ratio=0.5))
    adakd = AdakdConfig(name="test", latf=True, idts=True, ratio_schedule="fixed", ratio_end=0.75)
    objective = build_objective(method, adakd, total_steps=STEPS, seed=10)

    def on_step_end(trainer, row):
        if stop_at is not None and trainer.step == stop_at:
            trainer.save_checkpoint()   # as a pre-empted run does
            raise _Stop

    settings = train_settings(cfg, total_steps=STEPS, method=method, progress=False, world_size=world_size,
                              rank=rank)
    trainer = Trainer(settings, student=student, teacher=teacher, train_data=data(),
                      collate=lambda b: collate_train(b, 0), objective=objective, run_dir=run_dir,
                      logger=NullLogger(), device=torch.device("cpu"), on_step_end=on_step_end)
    try:
        result = trainer.train()
    except _Stop:
        return None
    return result


def losses(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--micro-batch", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from adakd.training import distributed

    info = distributed.init_from_env("cpu")
    w, r = info.world_size, info.rank
    mb = args.micro_batch or GLOBAL_BATCH // w
    try:
        modes = ["dp", "fsdp"] if w > 1 else ["single"]
        for mode in modes:
            run_dir = args.out / mode
            if mode == "fsdp":   # interrupted, then resumed from the checkpoint by a fresh Trainer
                train(run_dir, mb, w, r, fsdp=True, stop_at=STOP_AT)
                distributed.barrier()
                res = train(run_dir, mb, w, r, fsdp=True)
                resumed = res.resumed_from
            else:
                res = train(run_dir, mb, w, r)
                resumed = None
            if r == 0:
                (args.out / f"{mode}.json").write_text(json.dumps(
                    {"world_size": w, "micro_batch": mb, "accum": GLOBAL_BATCH // (mb * w), "losses": losses(run_dir),
                     "resumed_from": resumed}))
            distributed.barrier()
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
