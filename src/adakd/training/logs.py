"""The run's JSON-lines logs: train_log.jsonl (one row per optimizer step), telemetry.jsonl (per-token
tensors every adakd.telemetry_every steps) and the recipes' recipe_log.jsonl."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..io import append_jsonl, atomic_write_jsonl, read_jsonl_prefix


def truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log lines written after the checkpoint (they will be written again), and a
    last line a kill cut in half; step 0 empties the file (a fresh start)."""
    if not path.exists():
        return
    atomic_write_jsonl(path, [r for r in read_jsonl_prefix(path) if r.get("step", 0) <= step])


def write_telemetry(path: Path, step: int, tensors: Dict[str, List[torch.Tensor]], cap: int = 4096) -> None:
    row: Dict[str, Any] = {"step": step}
    for k, parts in tensors.items():
        flat = torch.cat([t.reshape(-1).float() for t in parts])
        if flat.numel() > cap:   # keep the file small: a deterministic stride sample
            flat = flat[:: math.ceil(flat.numel() / cap)]
        row[k] = [round(x, 5) for x in flat.tolist()]
    append_jsonl(path, row)
