"""Stopping a run cleanly: SIGTERM / SIGINT become a checkpoint at the next step boundary and exit code 75.

- `StopFlag` (inside `Trainer.train`): the first signal sets a flag checked after each optimizer step,
  where a checkpoint is saved; a second signal stops at once.
- `preemptible` (around a whole run, experiment.cli): outside the training loop -- loading, evaluation,
  writing results -- there is no step boundary to wait for, so SIGTERM raises `Preempted` at once. Files are
  written atomically, so nothing is half-written, and the same command resumes.
"""
from __future__ import annotations

import signal
from typing import Optional

PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: "try again"; the next run resumes from the checkpoint just saved


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the step boundary (or none was needed)."""


class preemptible:
    """SIGTERM -> Preempted, for the parts of a run outside the training loop (whose own handler wins)."""

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:   # not the main thread
            self._old = None
        return self

    @staticmethod
    def _handle(signum, frame):
        raise Preempted(f"signal {signum} outside the training loop (no checkpoint was needed); "
                        "run the same command again to resume")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (pre-emptible clusters)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:   # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
