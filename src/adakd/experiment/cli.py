"""`adakd-run`: compose the Hydra config and hand it to runner.run. Nothing else happens here.

In a multirun (`adakd-run -m ...`) each job is run by experiment.sweep.run_job: a table preset's row is
applied, and a failing job is recorded (failure.json) instead of stopping the sweep; the SweepSummary
callback (conf/config.yaml, hydra.callbacks) lists the failures at the end and sets the exit code.
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig
from transformers.utils import logging as hf_logging

from ..errors import USER_ERROR_EXIT_CODE, UserError
from ..training.signals import PREEMPTED_EXIT_CODE, Preempted, preemptible
from . import runner, sweep
from .config_store import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://adakd.conf", config_name="config")
def _main(cfg: DictConfig):
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


def show_tracebacks() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HYDRA_FULL_ERROR", "ADAKD_DEBUG"))


def main() -> None:
    # Offline-first: never wait on the hub or a W&B login unless the user asked for it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    _quiet_libraries()
    _main()


def _quiet_libraries() -> None:
    """Our progress bars say where a run is; the libraries' per-file bars and INFO lines only add noise."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    logging.getLogger("absl").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
