"""Smoke test of the loss benchmark at toy sizes (workers in-process; the subprocess driver is `slow`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adakd.bench import loss as bench

TINY = ["--n", "24", "--v", "96", "--h-student", "8", "--h-teacher", "12", "--chunk", "7", "--reps", "1"]


def test_loss_workers_agree():
    values = {}
    for loss in bench.LOSSES:
        for impl in bench.IMPLS:
            args = bench.parse_args(TINY + ["--loss", loss, "--impl", impl])
            out = bench.worker_loss(args)
            assert out["time_s"] > 0 and len(out["times_s"]) == 1 and "peak_mb" in out
            values[loss, impl] = out["loss"]
        assert values[loss, "chunked"] == pytest.approx(values[loss, "reference"], rel=1e-5)
        assert values[loss, "fused"] == pytest.approx(values[loss, "reference_hidden"], rel=1e-5)


def test_train_worker_quick():
    args = bench.parse_args(["--quick", "--v", "64", "--seq", "16", "--batch", "1", "--train-reps", "1"])
    out = bench.worker_train(args)
    assert set(out) == set(bench.LOSSES) and all(out[k]["time_s"] > 0 for k in out)


@pytest.mark.slow
def test_driver_prints_one_json_object_with_ratios():
    cmd = [
        sys.executable,
        "-m",
        "adakd.bench.loss",
        "--json",
        "--quick",
        "--n",
        "32",
        "--v",
        "128",
        "--seq",
        "16",
        "--batch",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    result = json.loads(out)
    assert set(bench.TARGETS) | {"adakd_loss_overhead"} <= set(result["ratios"])
