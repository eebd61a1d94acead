"""`adakd-run`: compose the Hydra config and hand it to runner.run. Nothing else happens here.

In a multirun (`adakd-run -m ...`) each job is run by experiment.sweep.run_job: a table preset's row is
applied, and a failing job is recorded (failure.json) instead of stopping the sweep; the SweepSummary
callback (conf/config.yaml, hydra.callbacks) lists the failures at the end and sets the exit code.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from ..errors import USER_ERROR_EXIT_CODE, ConfigError, UserError
from ..training.signals import PREEMPTED_EXIT_CODE, Preempted, preemptible
from . import runner, sweep
from .config_store import register_configs

register_configs()

# Hydra's directories of a launch (conf/config.yaml: hydra.run.dir, hydra.sweep.dir) end in this id, so two
# launches in the same second never share one (nor overwrite each other's job records and summary). The pid
# and a random part: unique on one host and, very nearly, across the hosts of a shared filesystem. Cached
# per config like Hydra's `now`, so a sweep's jobs (also in other processes, submitit) resolve the same.
LAUNCH_ID = f"{os.getpid()}-{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("adakd_launch", lambda: LAUNCH_ID, use_cache=True, replace=True)


def _output_root(path: str) -> str:
    """run.output_root, checked where Hydra first uses it (its own directories), before any job starts. Hydra
    cannot format an exception raised in a resolver, so the refusal is reported and the process ends here."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        _refuse(ConfigError(f"run.output_root={path} is not a directory: name a directory (made if missing)"))
    return str(p)   # `~` expanded, as build.identity.output_root does for the runs and caches


def _refuse(err: UserError) -> None:
    print(f"adakd-run: error: {err}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


OmegaConf.register_new_resolver("adakd_output_root", _output_root, replace=True)
_started = False   # set once Hydra has composed the config and handed it to the task function


@hydra.main(version_base="1.3", config_path="pkg://adakd.conf", config_name="config")
def _main(cfg: DictConfig):
    global _started
    _started = True
    if sweep.is_multirun():   # a job of a sweep: failures are recorded, the sweep goes on (experiment.sweep)
        try:
            with preemptible():
                return sweep.run_job(cfg)
        except Preempted as e:
            logging.getLogger("adakd").warning("%s", e)
            sys.exit(PREEMPTED_EXIT_CODE)
    code = run_command(cfg)
    if code:
        sys.exit(code)


def run_command(cfg: DictConfig) -> int:
    """One command: 0 when it ran, PREEMPTED_EXIT_CODE (75) after SIGTERM, USER_ERROR_EXIT_CODE (2) with one
    message on stderr for a bad setting or file (no traceback unless HYDRA_FULL_ERROR=1 or ADAKD_DEBUG=1)."""
    try:
        with preemptible():   # SIGTERM -> checkpoint at the step boundary (or stop, outside training) -> 75
            runner.run(sweep.job_config(cfg))
        return 0
    except Preempted as e:
        logging.getLogger("adakd").warning("%s", e)
        return PREEMPTED_EXIT_CODE
    except UserError as e:
        if show_tracebacks():
            raise
        print(f"adakd-run: error: {e}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE
    except OSError as e:
        if e.errno != errno.ENOSPC or show_tracebacks():
            raise
        print(f"adakd-run: error: {disk_full_message(e)}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE


def disk_full_message(e: OSError) -> str:
    """A full disk anywhere (a model, predictions, plots): where, and what is free. Every result is written
    atomically, so what was there before is intact and the same command resumes."""
    where = Path(e.filename).parent if e.filename else Path.cwd()
    while not where.exists() and where != where.parent:
        where = where.parent
    return (f"no space left on the device while writing {e.filename or 'a file'} (in {where}: "
            f"{shutil.disk_usage(where).free / 2 ** 20:,.1f} MiB free). Free some space (or use another "
            "run.output_root) and run the same command again: earlier results and checkpoints are intact")


def show_tracebacks() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HYDRA_FULL_ERROR", "ADAKD_DEBUG"))


def main() -> None:
    # Offline-first: never wait on the hub or a W&B login unless the user asked for it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    _quiet_libraries()
    try:
        _main()
    except SystemExit as e:
        # Hydra reports its own errors (composition, override syntax, a missing option, an interpolation in
        # its directories) with one message and exit 1: before the task started, these are user errors.
        if not (_started or sweep.launched) and e.code == 1:
            sys.exit(USER_ERROR_EXIT_CODE)
        raise


def _quiet_libraries() -> None:
    """Our progress bars say where a run is; the libraries' per-file bars and INFO lines only add noise."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    logging.getLogger("absl").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
