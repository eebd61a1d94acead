"""The base of a batch source: the Trainer hooks (`__call__`, `on_step_end`, `state_dict`), a per-step
log (`recipe_log.jsonl` in the run directory) and the recipe's own random generator."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...io import append_jsonl
from ..logs import truncate_log


class BatchSource:
    """`source(batch, trainer) -> batch` for each micro-batch; `on_step_end(trainer, row)` after each
    optimizer step; `state_dict()` / `load_state_dict()` go into the trainer's checkpoints."""

    name = "base"

    def __init__(self, *, run_dir: Path | None = None, logger: Any = None, rank: int = 0):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rank = rank
        self.calls = 0                     # micro-batches seen (names the sampling streams)
        self._step_stats: dict[str, float] = {}
        self._log_started = False

    # -- hooks ---------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, torch.Tensor], trainer) -> dict[str, torch.Tensor]:
        if not self._log_started:   # a fresh start empties the log, a resume drops rows after its step
            self._log_started = True
            self._truncate_log(int(getattr(trainer, "step", 0)))
        self.calls += 1
        return self.next_batch(batch, trainer)

    def next_batch(self, batch: dict[str, torch.Tensor], trainer) -> dict[str, torch.Tensor]:
        return batch

    def on_step_end(self, trainer, row: dict[str, Any]) -> None:
        stats = self.step_stats(trainer)
        self._step_stats = {}
        if not stats:
            return
        out = {"step": int(trainer.step), **stats}
        if self.rank == 0 and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.log_path, out)
        logger = getattr(trainer, "logger", None)
        if logger is not None and self.rank == 0:
            logger.log({f"recipe/{k}": v for k, v in stats.items()}, step=int(trainer.step))

    def step_stats(self, trainer) -> dict[str, float]:
        return dict(self._step_stats)

    def count(self, key: str, value: float = 1.0) -> None:
        self._step_stats[key] = self._step_stats.get(key, 0.0) + value

    def engine_record(self) -> dict[str, Any]:
        """What a vLLM engine sampling for this source cost (start-up, generation, refreshes); {} for the native
        sampler."""
        engine = getattr(self, "policy_engine", None)
        return engine.stats() if engine is not None else dict(getattr(self, "engine_stats", {}) or {})

    def close(self) -> None:
        """Release what the source holds beyond the run (a sampling engine)."""

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))

    # -- log -----------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "recipe_log.jsonl"

    def _truncate_log(self, step: int) -> None:
        if self.rank != 0 or self.run_dir is None:
            return
        truncate_log(self.log_path, step)

