"""End to end on the real config, shrunk: experiment=smoke through runner.run and through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adakd.experiment import runner

from .compose import compose_cfg

pytestmark = pytest.mark.integration   # the whole pipeline, in this process and through the CLI

REPO = Path(__file__).resolve().parents[1]
ADAKD_RUN = Path(sys.executable).parent / "adakd-run"


def _check_metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    assert m["status"] == "ok"
    assert m["rougeL"] and all({"mean", "std", "per_seed", "n"} <= set(v) for v in m["rougeL"].values())
    assert isinstance(m["avg"], float)
    return m


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    cfg = compose_cfg(["experiment=smoke", f"run.output_root={out}", "run.progress=false", "logger=none"])
    metrics = runner.run(cfg)
    return out, cfg, metrics


def test_smoke_writes_every_artefact(smoke_run):
    out, cfg, metrics = smoke_run
    run_dir = runner.run_dir_for(cfg)
    assert run_dir.parent == out / "runs"
    m = _check_metrics(run_dir / "metrics.json")
    assert m["run"]["steps"] == cfg.train.steps
    for f in ("config.yaml", "run_info.json", "train_log.jsonl", "model/model.safetensors"):
        assert (run_dir / f).exists(), f
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r.get("split") == "dev"]   # validation rows (default: 5 times and before step 1)
    rows = [r for r in rows if r.get("split") != "dev"]
    assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))
    assert dev and dev[0]["step"] == 0 and dev[-1]["step"] == cfg.train.steps
    assert all("ratio" in r and "tau_mean" in r for r in rows)
    preds = list((run_dir / "predictions").glob("*.jsonl"))
    assert preds, "predictions/<benchmark>.jsonl missing"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["versions"]["torch"]


# The first optimizer steps of `adakd-run experiment=smoke` (rkl + AdaKD on the tiny pair), recorded before the
# package redesign: any change to the data, the models, the objective or the loop that moves the numbers fails
# here. Tolerance: thread count and CPU type move the last float32 digits (about 1e-8 relative), nothing more.
GOLDEN_SMOKE = [  # step: (loss, grad_norm, n_kept, tau_mean, diff_kept_mean)
    (1, 0.3673850744962692, 0.17239664494991302, 82.0, 1.0108824372291565, 0.31085793673992157),
    (2, 0.36320050060749054, 0.17776691913604736, 80.5, 1.0097044110298157, 0.3091724216938019),
    (3, 0.3686268776655197, 0.19173564016819, 82.0, 1.0087655782699585, 0.31134964525699615),
    (4, 0.3626869320869446, 0.20583476126194, 77.0, 1.0106679797172546, 0.30880819261074066),
]


def test_smoke_first_steps_match_the_golden_values(smoke_run):
    out, cfg, _ = smoke_run
    rows = [json.loads(x) for x in (runner.run_dir_for(cfg) / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    for step, loss, grad_norm, n_kept, tau_mean, diff in GOLDEN_SMOKE:
        r = rows[step - 1]
        assert r["step"] == step and r["n_kept"] == n_kept
        got = (r["loss"], r["grad_norm"], r["tau_mean"], r["diff_kept_mean"])
        assert got == pytest.approx((loss, grad_norm, tau_mean, diff), rel=1e-6), f"step {step}"


def test_same_command_again_skips_the_finished_run(smoke_run, capsys):
    out, cfg, metrics = smoke_run
    run_dir = runner.run_dir_for(cfg)
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    again = runner.run(cfg)
    assert again["avg"] == metrics["avg"]
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"metrics: {run_dir / 'metrics.json'}"


def test_smoke_run_directory_name_is_pinned(smoke_run):
    """The run-directory hash is how finished runs are found again: a refactoring that moves it orphans them."""
    _, cfg, _ = smoke_run
    assert runner.run_dir_for(cfg).name == "rkl-adakd-tiny-803dac64ec"


def test_each_result_file_is_written_once(smoke_run, monkeypatch):
    """A run writes run_info.json and metrics.json once each, at its end; a finished run asked again with a
    baseline row gets the row recorded beside its results, which are not recomputed."""
    out, cfg, metrics = smoke_run
    writes = []
    real = runner.atomic_write_json
    monkeypatch.setattr(runner, "atomic_write_json", lambda path, obj: (writes.append(Path(path)), real(path, obj)))
    with_row = compose_cfg(["experiment=smoke", f"run.output_root={out}", "run.progress=false", "logger=none",
                            "run.baselines=[student_init]"])
    again = runner.run(with_row)
    main, row = runner.run_dir_for(cfg), Path(again["baselines"]["student_init"]["dir"])
    assert sorted(writes) == sorted([row / "run_info.json", row / "metrics.json", main / "metrics.json"])
    recorded = json.loads((main / "metrics.json").read_text())
    assert recorded["baselines"] == again["baselines"] and recorded["rougeL"] == metrics["rougeL"]
    assert list(json.loads((row / "run_info.json").read_text()))[-1] == "started"   # evaluation only: no costs
    writes.clear()
    runner.run(with_row)   # the same rows again: nothing to record
    assert writes == []


def test_different_config_gets_a_different_directory(smoke_run):
    out, cfg, _ = smoke_run
    other = compose_cfg(["experiment=smoke", f"run.output_root={out}", "adakd=none"])
    assert runner.run_dir_for(other) != runner.run_dir_for(cfg)
    same = compose_cfg(["experiment=smoke", f"run.output_root={out}", "logger=wandb", "eval.batch_size=3"])
    assert runner.run_dir_for(same) == runner.run_dir_for(cfg)   # non-semantic keys do not count


def _cli(args, tmp_path, timeout=240):
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run([str(ADAKD_RUN), *args, f"run.output_root={tmp_path}", "run.progress=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_fkl_with_idts(tmp_path):
    r = _cli(["experiment=smoke", "method=fkl", "adakd.idts=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("metrics: ")
    m = _check_metrics(Path(last[len("metrics: "):]))
    assert m["run"]["method"] == "fkl"


def test_cli_multirun_two_jobs(tmp_path):
    r = _cli(["-m", "experiment=smoke", "method=rkl,fkl", "adakd=none"], tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [line for line in r.stdout.splitlines() if line.startswith("metrics: ")]
    assert len(metrics) == 2 and len(set(metrics)) == 2
    for line in metrics:
        _check_metrics(Path(line[len("metrics: "):]))
