"""Training checkpoints: atomic, checksummed, the last K kept, corrupt ones refused.

Layout: <dir>/step_00000200/{model.safetensors, trainer_state.pt, meta.json}. A checkpoint directory
is complete only once renamed from its temp name, so a kill mid-write leaves the previous one intact.
Weights go through safetensors; the trainer state (optimizer, scheduler, LATF, RNG, data position)
through torch.save and is read back with weights_only=True, so loading never runs pickled code.
A checkpoint that fails its checksums or cannot be read is renamed to `corrupt-step_...` (kept for a
post-mortem, never loaded again) and the previous one is used.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ..errors import DiskFull
from ..io import fsync_dir, public_mode
from ..models import file_sha256

log = logging.getLogger(__name__)
PREFIX = "step_"
CORRUPT_PREFIX = "corrupt-"
FILES = ("model.safetensors", "trainer_state.pt")


class CorruptCheckpoint(RuntimeError):
    pass


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, every CUDA device) as weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
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


def save(ckpt_root: Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep_last: int = 2) -> Path:
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{final.name}."))
    try:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "trainer_state.pt")
        meta = {"step": step, "files": {f: file_sha256(tmp / f) for f in FILES}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():   # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            public_mode(f)
        public_mode(tmp, directory=True)
        if final.exists():
            # Same step saved again: move the old one aside first, so a kill between the two renames
            # leaves a complete checkpoint under one of the two names (_tidy puts it back).
            trash = ckpt_root / f".trash-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, RuntimeError)):
            _raise_if_disk_full(e, ckpt_root, step, model)
        raise
    for old in list_checkpoints(ckpt_root)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _raise_if_disk_full(err: BaseException, ckpt_root: Path, step: int, model: torch.nn.Module) -> None:
    """A checkpoint write that failed for want of space (OSError ENOSPC, or torch's bare "unexpected pos" from
    its zip writer) becomes one message naming the directory and the space needed (the size of the previous
    checkpoint, else three times the weights: weights plus the optimizer's two moments)."""
    previous = list_checkpoints(ckpt_root)
    if previous:
        needed = sum(f.stat().st_size for f in previous[-1].iterdir() if f.is_file())
    else:
        needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(ckpt_root).free
    if getattr(err, "errno", None) != errno.ENOSPC and free >= needed:
        return   # space is there: another failure, keep its own message
    kept = f"; the previous checkpoint ({previous[-1].name}) is intact" if previous else ""
    raise DiskFull(f"no space left to write the step-{step} checkpoint in {ckpt_root}: {_mb(free)} free, about "
                   f"{_mb(needed)} needed{kept}. Free some space (or use another run.output_root) and run the "
                   "same command again: it resumes") from None


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not Path(ckpt_root).exists():
        return []
    return sorted(p for p in Path(ckpt_root).iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        step = int(meta["step"])
        files = dict(meta["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{meta_path}: unreadable or incomplete ({e})") from e
    if path.name != f"{PREFIX}{step:08d}":
        raise CorruptCheckpoint(f"{meta_path}: says step {step}, the directory is {path.name}")
    missing = [f for f in FILES if f not in files]
    if missing:
        raise CorruptCheckpoint(f"{meta_path}: no checksum for {missing}")
    for name, digest in files.items():
        f = path / name
        if not f.exists():
            raise CorruptCheckpoint(f"{f}: missing")
        if file_sha256(f) != digest:
            raise CorruptCheckpoint(f"{f}: checksum mismatch (the file is truncated or was changed)")
    return meta


def load_latest(ckpt_root: Path, model: torch.nn.Module) -> tuple[int, dict[str, Any]] | None:
    """Load the newest valid checkpoint into `model`; a corrupt one is refused, set aside, and the
    previous one used. None when there is no usable checkpoint."""
    _tidy(Path(ckpt_root))
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            meta = verify(path)
            # weights_only: plain tensors and containers only; a pickled object is refused, not run.
            state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
            load_model(_unwrap(model), str(path / "model.safetensors"))
            return int(meta["step"]), state
        except Exception as e:   # noqa: BLE001 - any unreadable checkpoint is refused the same way
            aside = path.with_name(CORRUPT_PREFIX + path.name)
            log.warning("refusing checkpoint %s (%s: %s); it is kept as %s and the previous checkpoint is "
                        "used", path, type(e).__name__, e, aside.name)
            shutil.rmtree(aside, ignore_errors=True)
            try:
                os.replace(path, aside)
            except OSError:
                pass
    return None


def _tidy(ckpt_root: Path) -> None:
    """Clean up after a kill during save(): drop half-written temp dirs, restore a moved-aside checkpoint."""
    if not ckpt_root.is_dir():
        return
    for p in ckpt_root.iterdir():
        try:   # several ranks may tidy at once: whoever comes second finds the work done
            if p.name.startswith(f".{PREFIX}"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".trash-{PREFIX}"):
                target = ckpt_root / p.name[len(".trash-"):]
                if target.exists():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.replace(p, target)
        except OSError:
            pass


def _unwrap(model):
    return getattr(model, "module", model)   # DDP
