"""Data parallel on CPU (gloo): the result does not depend on how many processes ran it.

world 2 x accumulation 1, world 1 x accumulation 2 and FSDP (world 2, interrupted and resumed from its
checkpoint) give the same loss trajectory for the same global batch -- tests/dist_worker.py, launched
with torchrun exactly as a multi-GPU run is (docs/scale.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration   # starts torchrun worker processes

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
REL_TOL = 1e-4


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(WORKER), "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    # The one-process reference runs here, in-process (same code path: world 1, accumulation 2).
    import torch
    sys.path.insert(0, str(HERE))
    import dist_worker
    threads = torch.get_num_threads()
    try:
        assert dist_worker.main(["--out", str(out), "--micro-batch", "4"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {m: json.loads((out / f"{m}.json").read_text()) for m in ("dp", "fsdp", "single")}


def _rel(a, b):
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def test_world2_accum1_equals_world1_accum2(runs):
    dp, single = runs["dp"], runs["single"]
    assert (dp["world_size"], dp["accum"]) == (2, 1)
    assert (single["world_size"], single["accum"]) == (1, 2)
    assert len(dp["losses"]) == len(single["losses"]) == 6
    assert _rel(dp["losses"], single["losses"]) < REL_TOL, (dp["losses"], single["losses"])
    assert dp["losses"][-1] != dp["losses"][0]   # it trained: the trajectory is not trivially constant


def test_fsdp_with_resume_matches_data_parallel(runs):
    fsdp, single = runs["fsdp"], runs["single"]
    assert fsdp["resumed_from"] == 3          # the second Trainer picked up the FSDP checkpoint
    assert len(fsdp["losses"]) == 6
    assert _rel(fsdp["losses"], single["losses"]) < REL_TOL, (fsdp["losses"], single["losses"])


def test_without_torchrun_env_it_is_one_process(monkeypatch):
    from adakd.training import distributed
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.init_from_env("cpu")
    assert (info.world_size, info.rank, info.enabled, info.is_main) == (1, 0, False, True)
    assert not distributed.is_initialized()
    distributed.barrier()   # a no-op
    assert distributed.all_reduce_mean({"a": 1.5}, 1) == {"a": 1.5}


def test_trainer_accumulation_follows_world_size():
    import torch
    from omegaconf import OmegaConf

    from adakd.schema import TrainConfig
    from adakd.schema import MethodConfig
    from adakd.training.loop import Trainer
    from adakd.training.settings import train_settings
    sys.path.insert(0, str(HERE))
    import dist_worker

    _, student = dist_worker.models()
    method = OmegaConf.structured(MethodConfig(name="sft", divergence="none", recipe="sft", kd_ratio=0.0))

    def trainer(world, mb, gb=8):
        cfg = OmegaConf.structured(TrainConfig(steps=1, global_batch=gb, micro_batch=mb))
        return Trainer(train_settings(cfg, total_steps=1, method=method, world_size=world, rank=0),
                       student=student, teacher=None, train_data=dist_worker.data(8), collate=lambda b: b,
                       objective=None, run_dir=Path("/nonexistent"), logger=None, device=torch.device("cpu"))
    assert trainer(1, 2).accum == 4
    assert trainer(2, 2).accum == 2
    assert trainer(4, 2).accum == 1
    t = trainer(8, 2)                # a micro batch above a rank's share is cut to the share
    assert (t.micro_batch, t.accum) == (1, 1)
    with pytest.raises(ValueError, match="not divisible"):
        trainer(3, 2)
    with pytest.raises(ValueError, match="not divisible"):
        trainer(2, 3)


@pytest.mark.slow
def test_torchrun_runner_end_to_end_with_fsdp(tmp_path):
    """`torchrun -m adakd.cli` (2 gloo processes, FSDP): teacher fine-tuned by both, rank 0 evaluates, and the
    distillation's loss trajectory equals the one-process run's (same global batch)."""
    # the same micro batches in both (the teacher's fine-tune recipe has micro = global = 16: under two processes
    # it would be cut to each one's share, 8, and a per-micro-batch token mean weighs tokens differently)
    base = ["experiment=smoke", "train.threads=1", "logger=none", "run.progress=false", "run.baselines=[teacher]",
            "model.teacher.finetune.micro_batch=8"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "adakd", *base, "train.fsdp=true", f"run.output_root={tmp_path / 'two'}"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, "-m", "adakd", *base, f"run.output_root={tmp_path / 'one'}"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    m2 = json.loads(next((tmp_path / "two" / "runs").glob("rkl-*/metrics.json")).read_text())
    m1 = json.loads(next((tmp_path / "one" / "runs").glob("rkl-*/metrics.json")).read_text())
    assert m2["run"]["world_size"] == 2 and m1["run"]["world_size"] == 1
    assert m2["status"] == m1["status"] == "ok" and "teacher" in m2["baselines"]
    def losses(root):
        rows = [json.loads(x) for x in next(root.glob("rkl-*/train_log.jsonl")).read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]
    l2, l1 = losses(tmp_path / "two" / "runs"), losses(tmp_path / "one" / "runs")
    assert _rel(l2, l1) < REL_TOL
