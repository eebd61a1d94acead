"""Smoke test of the loss benchmark at toy sizes (cases in-process; the subprocess driver is `slow`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adakd.bench import loss as bench

TINY = ["--n", "24", "--v", "96", "--h-student", "8", "--h-teacher", "12", "--chunk", "7"]


@pytest.mark.integration
def test_loss_cases_agree():
    values = {}
    for loss in bench.LOSSES:
        for impl in bench.IMPLS:
            case = bench.LossCase(bench.parse_args([*TINY, "--loss", loss, "--impl", impl]))
            elapsed, values[loss, impl] = case.run()
            assert elapsed > 0 and case.peak_mb() >= 0
        assert values[loss, "chunked"] == pytest.approx(values[loss, "reference"], rel=1e-5)
        assert values[loss, "fused"] == pytest.approx(values[loss, "reference_hidden"], rel=1e-5)


def test_train_worker_quick():
    args = bench.parse_args(["--quick", "--v", "64", "--seq", "16", "--batch", "1", "--train-reps", "2"])
    out = bench.worker_train(args)
    assert all(out[k]["time_s"] > 0 for k in bench.LOSSES) and out["adakd_overhead"] > 0


@pytest.mark.slow
@pytest.mark.integration
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
    assert all(pair["time_ratio"] > 0 for pair in result["pairs"].values())
