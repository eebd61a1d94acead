"""Table sweeps: a table preset's rows, robust multirun jobs, and the end-of-sweep summary.

A table preset (experiments/table*.yaml) holds a `table:` block: its rows, each a list of Hydra overrides,
plus labels, the "plain" partner of each AdaKD row and the paper's numbers. `adakd-run -m experiment=table2`
sweeps `table.row` over the row ids (the preset's `hydra.sweeper.params`); a job then composes the config
again with its row's overrides added, exactly as the renderer (`adakd-report`) does to find the
run directory of each row. The `table` block itself is dropped before the run: it describes the sweep and
is no part of a run's identity, so one run serves every table that has the same row (table 2's `full` is
table 3's `hellinger`, table 4's `latf` and table 5's `idts`).

Robustness (multirun only): an exception in one job is caught, written to `<run dir>/failure.json` (and
the job's Hydra directory), and the sweep goes on with the next job; `SweepSummary`, a Hydra callback
configured in conf/config.yaml, writes `<sweep dir>/sweep_summary.json`, prints which jobs ran, were
skipped (finished before) or failed, and exits non-zero when any failed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ..errors import RunLocked
from ..io import atomic_write_json
from ..training.signals import Preempted
from . import runner
from .tables import FAILURE_FILE, ROW_KEY, override_key, row_overrides, strip_table
from .tasks import is_finished, run_dir_for

log = logging.getLogger(__name__)

JOB_FILE = "adakd_job.json"
launched = False   # a sweep of this process has started (its jobs may run in other processes: submitit)
SUMMARY_FILE = "sweep_summary.json"


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_config(cfg: DictConfig) -> DictConfig:
    """Inside `adakd-run`: apply the table row named by `table.row` (compose again with its overrides)."""
    table = cfg.get("table")
    row = table.get("row") if table is not None else None
    if row is None:
        return strip_table(cfg)
    hc = HydraConfig.get()
    task = [o for o in hc.overrides.task if override_key(o) != ROW_KEY]
    new = compose(config_name=hc.job.config_name, overrides=task + row_overrides(table, str(row)))
    log.info("table row %r: %s", row, " ".join(row_overrides(table, str(row))))
    return strip_table(new)


# ------------------------------------------------------------------------------------------------- jobs
def run_job(cfg: DictConfig) -> Dict[str, Any]:
    """One multirun job that never raises (except for pre-emption and Ctrl-C): returns its status."""

    t0 = time.time()
    overrides = list(HydraConfig.get().overrides.task)
    status: Dict[str, Any] = {"overrides": overrides, "status": "failed", "run_dir": None}
    run_dir: Optional[Path] = None
    try:
        cfg = job_config(cfg)
        run_dir = run_dir_for(cfg)
        status["run_dir"] = str(run_dir)
        already = is_finished(run_dir)
        metrics = runner.run(cfg)
        status.update(status="skipped" if already else "ok", avg=metrics.get("avg"))
        stale = run_dir / FAILURE_FILE
        if stale.exists():
            stale.unlink()
    except Preempted:        # SIGTERM: stop the sweep; the same command resumes it
        raise
    except Exception as e:   # noqa: BLE001 - one job's failure must not stop the sweep
        tb = traceback.format_exc()
        status.update(error=f"{type(e).__name__}: {e}", traceback=tb)
        log.error("job failed (%s): %s\n%s", " ".join(overrides), status["error"], tb)
        # A directory held by another process is that process's: its outcome, not this refusal, goes there.
        # A job refused before it started (no run directory yet) leaves none behind: its record is the job's.
        if run_dir is not None and not isinstance(e, RunLocked) and run_dir.is_dir():
            try:
                atomic_write_json(run_dir / FAILURE_FILE,
                                  {**status, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
                status["details"] = str(run_dir / FAILURE_FILE)
            except OSError as werr:
                log.warning("could not write %s: %s", run_dir / FAILURE_FILE, werr)
    status["seconds"] = round(time.time() - t0, 2)
    return status


# ------------------------------------------------------------------------------------------- callback


class SweepSummary(Callback):
    """Records each multirun job's outcome in its Hydra directory; at the end, summarises, sets the exit code.

    Files, not memory: with a remote launcher (submitit) jobs end in other processes, and the sweep
    directory is what they share.
    """

    def __init__(self, exit_on_failure: bool = True):
        self.exit_on_failure = exit_on_failure
        self._t0 = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global launched
        launched = True   # the sweep's own exit code from here on (experiment.cli), jobs maybe elsewhere
        self._t0 = time.time()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
            rec = dict(job_return._return_value)
        elif job_return.status == JobStatus.COMPLETED:
            rec = {"status": "ok"}
        else:
            err = job_return._return_value
            rec = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        rec.setdefault("overrides", list(job_return.overrides or []))
        rec["job_num"] = int(config.hydra.job.num)
        # where the job ran: this callback runs in the job's process (another one per job with submitit)
        rec["pid"], rec["host"] = os.getpid(), socket.gethostname()
        atomic_write_json(Path(config.hydra.runtime.output_dir) / JOB_FILE, rec)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarise(sweep_dir, seconds=time.time() - self._t0)
        print(format_summary(summary), flush=True)
        if summary["failed"] and self.exit_on_failure:
            sys.exit(1)


def summarise(sweep_dir: Path, seconds: Optional[float] = None) -> Dict[str, Any]:
    jobs = []
    for f in sorted(sweep_dir.glob(f"*/{JOB_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            jobs.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            jobs.append({"status": "failed", "error": f"unreadable {f}: {e}", "overrides": []})
    for j in jobs:
        j.pop("traceback", None)
    counts = {s: sum(j.get("status") == s for j in jobs) for s in ("ok", "skipped", "failed")}
    summary = {"sweep_dir": str(sweep_dir), "jobs": len(jobs), **counts,
               "seconds": None if seconds is None else round(seconds, 1), "results": jobs}
    atomic_write_json(sweep_dir / SUMMARY_FILE, summary)
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    secs = f" in {summary['seconds']:.0f} s" if summary.get("seconds") is not None else ""
    lines = [f"sweep: {summary['jobs']} jobs{secs}: {summary['ok']} ran, {summary['skipped']} skipped "
             f"(finished before), {summary['failed']} failed  [{Path(summary['sweep_dir']) / SUMMARY_FILE}]"]
    for j in summary["results"]:
        if j.get("status") == "failed":
            where = f"\n      details: {j['details']}" if j.get("details") else ""   # only a file written
            err = "\n      ".join(str(j.get("error", "?")).strip().splitlines())   # every line: the keys
            lines.append(f"  FAILED {' '.join(_short(j.get('overrides', [])))}: {err}{where}")
    return "\n".join(lines)


def _short(overrides: Sequence[str]) -> List[str]:
    return [o for o in overrides if not override_key(o).startswith("hydra")]
