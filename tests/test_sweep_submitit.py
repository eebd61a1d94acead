"""A sweep through submitit (hydra-submitit-launcher, the `slurm` extra that `make install` installs): with
`hydra/launcher=submitit_local` each job is pickled, run in a process of its own and its outcome collected
from the sweep directory, the path a SLURM sweep (`hydra/launcher=slurm`) takes on a cluster. Skipped, with
the reason, only where the plugin is absent (CI installs it: .ci/run -> make test -> make install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason='hydra-submitit-launcher not installed (pip install -e ".[slurm]"; make install does)')

pytestmark = pytest.mark.integration

# the smallest table: two rows of the tiny pair, one generation seed; `bogus` is not a row (the job fails)
SWEEP = ["experiment=smoke-table", "eval.seeds=[10]", "logger=none", "run.progress=false", "train.threads=1"]


def _sweep(tmp_path: Path, rows: str, *launcher: str) -> subprocess.Popen:
    """The sweep, run to its end (a Popen: its pid is the sweep's process)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adakd", "-m", *launcher, *SWEEP, f"table.row={rows}",
         f"run.output_root={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc


def _records(sweep_dir: Path):
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    jobs = {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/adakd_job.json")}
    return summary, jobs


def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path):
    out = tmp_path / "submitit"
    out.mkdir()
    proc = _sweep(out, "fkl,bogus", "hydra/launcher=submitit_local")
    log = proc.stdout_text[-4000:] + proc.stderr_text[-4000:]
    assert proc.returncode == 1, log  # one job failed: as with the basic launcher
    assert "Submitit 'local' sweep output dir" in log, log
    (sweep_dir,) = out.glob("hydra/multirun/*")
    summary, jobs = _records(sweep_dir)
    # both outcomes and the summary are in the sweep directory
    assert summary["jobs"] == 2 and summary["ok"] == 1 and summary["failed"] == 1, summary
    assert sorted(jobs) == [0, 1]
    # each job ran in a process of its own: two pids, neither the sweep's (which waits for them)
    pids = {jobs[0]["pid"], jobs[1]["pid"]}
    assert len(pids) == 2 and proc.pid not in pids, jobs
    # submitit's own record: each job pickled, run, its result pickled back
    assert len(list(sweep_dir.glob(".submitit/*/*_submitted.pkl"))) == 2
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2
    ok, failed = jobs[0], jobs[1]
    assert ok["status"] == "ok" and "table.row=fkl" in ok["overrides"] and ok["avg"] is not None
    metrics = json.loads((Path(ok["run_dir"]) / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["avg"] == ok["avg"]
    assert failed["status"] == "failed" and "not a row of this table" in failed["error"]
    assert "FAILED table.row=bogus" in log and "1 ran, 0 skipped (finished before), 1 failed" in log

    # the failing job, reported as the basic launcher reports it (same record but for where it ran)
    basic_out = tmp_path / "basic"
    basic_out.mkdir()
    basic = _sweep(basic_out, "bogus")
    assert basic.returncode == 1, basic.stdout_text[-2000:] + basic.stderr_text[-2000:]
    (basic_dir,) = basic_out.glob("hydra/multirun/*")
    _, basic_jobs = _records(basic_dir)
    where = ("pid", "host", "seconds", "job_num", "overrides")
    assert {k: v for k, v in basic_jobs[0].items() if k not in where} == \
        {k: v for k, v in failed.items() if k not in where}
    assert basic_jobs[0]["pid"] == basic.pid  # the basic launcher: in the sweep's own process
