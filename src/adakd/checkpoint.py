"""Training checkpoints: atomic, checksummed, the last K kept, corrupt ones refused.

Layout: <dir>/step_00000200/{model.safetensors, trainer_state.pt, meta.json}. A checkpoint directory
is complete only once renamed from its temp name, so a kill mid-write leaves the previous one intact.
Weights go through safetensors; the trainer state (optimizer, scheduler, LATF, RNG, data position)
through torch.save and is read back with weights_only=True, so loading never runs pickled code.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from .models import file_sha256

log = logging.getLogger(__name__)
PREFIX = "step_"


class CorruptCheckpoint(RuntimeError):
    pass


def capture_rng() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save(ckpt_root: Path, step: int, model: torch.nn.Module, state: Dict[str, Any], keep_last: int = 2) -> Path:
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{final.name}."))
    try:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "trainer_state.pt")
        meta = {"step": step, "files": {f: file_sha256(tmp / f) for f in ("model.safetensors", "trainer_state.pt")}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():   # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path):
    if not Path(ckpt_root).exists():
        return []
    return sorted(p for p in Path(ckpt_root).iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(path: Path) -> Dict[str, Any]:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{meta_path}: unreadable ({e})") from e
    for name, digest in meta.get("files", {}).items():
        f = path / name
        if not f.exists() or file_sha256(f) != digest:
            raise CorruptCheckpoint(f"{f}: missing or checksum mismatch")
    return meta


def load_latest(ckpt_root: Path, model: torch.nn.Module) -> Optional[Tuple[int, Dict[str, Any]]]:
    """Load the newest valid checkpoint into `model`; a corrupt one is reported and the previous one used."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            meta = verify(path)
            state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
            load_model(_unwrap(model), str(path / "model.safetensors"))
            return int(meta["step"]), state
        except (CorruptCheckpoint, RuntimeError, OSError) as e:
            log.warning("refusing checkpoint %s (%s); falling back to the previous one", path, e)
    return None


def _unwrap(model):
    return getattr(model, "module", model)   # DDP
