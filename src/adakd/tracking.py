"""Experiment tracking: W&B (offline by default) and a no-op logger with the same interface.

The loop calls `logger.log(...)` unconditionally; whether anything is sent is decided here, once.
W&B never blocks on a login: the default mode is offline (files kept under the run directory for a later
`wandb sync`), `WANDB_MODE` from the environment wins, and `logger=none` or `WANDB_MODE=disabled` turn
it off. Local files stay the source of truth; W&B mirrors them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)
_online_failed = False   # W&B online failed to start once in this process: later runs go offline directly


class NullLogger:
    enabled = False

    def log(self, values: Dict[str, Any], step: Optional[int] = None) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def log_image(self, name: str, path: Path) -> None:
        pass

    def summary(self, values: Dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    enabled = True

    def __init__(self, run):
        self.run = run

    def log(self, values, step=None):
        self.run.log(values, step=step)

    def log_table(self, name, columns, rows):
        import wandb   # optional and slow to import (~1 s): only runs that log to W&B load it
        self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_image(self, name, path):
        import wandb   # optional, as above
        self.run.log({name: wandb.Image(str(path))})

    def summary(self, values):
        for k, v in values.items():
            self.run.summary[k] = v

    def finish(self, exit_code: int = 0):
        self.run.finish(exit_code=exit_code)


def make_logger(cfg, run_dir: Path, run_id: str, name: str, config: Dict[str, Any],
                tags: Optional[List[str]] = None):
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if cfg.name == "none" or mode == "disabled":
        return NullLogger()
    if cfg.name != "wandb":
        raise ValueError(f"unknown logger {cfg.name!r}; valid: ['wandb', 'none']")
    try:
        import wandb   # optional, as above
    except ImportError:
        log.warning("wandb is not installed; logging to local files only")
        return NullLogger()
    run_dir.mkdir(parents=True, exist_ok=True)
    global _online_failed
    if mode == "online" and _online_failed:   # warned once already: every later run of this process offline
        mode = "offline"

    def init(mode: str):
        extra = {"init_timeout": float(cfg.get("init_timeout") or 15.0)} if mode == "online" else {}
        return wandb.init(
            project=cfg.project, entity=cfg.entity, mode=mode, dir=str(run_dir), id=run_id, name=name,
            config=config, tags=list(tags or cfg.tags), resume="allow", reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", **extra),
        )
    try:
        return WandbLogger(init(mode))
    except Exception as e:   # tracking must never cost a run its results
        if mode != "online":
            log.warning("wandb.init failed (%s); logging to local files only", e)
            return NullLogger()
        _online_failed = True
        log.warning("W&B online did not start within logger.init_timeout=%ss (%s): logging offline under %s "
                    "instead (`wandb sync` it later), for this and every later run of this command",
                    cfg.get("init_timeout"), str(e).splitlines()[0] if str(e) else type(e).__name__, run_dir)
        wandb.teardown()   # the online attempt's service still holds the run id
    try:
        return WandbLogger(init("offline"))
    except Exception as e:   # noqa: BLE001 - as above
        log.warning("wandb.init failed offline too (%s); logging to local files only", e)
        return NullLogger()
