"""Model directories on disk: safetensors weights + config + tokenizer + adakd_model.json (with the sha256 of
the weights), written atomically and verified at every load."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from torch import nn

from .loading import ModelLoadError


def save_dir_atomically(out_dir: Path, write) -> None:
    """write(tmp_dir) into a temp dir beside out_dir, then rename it into place.

    An existing out_dir is first renamed aside (`.<name>.old`) and deleted only once the new one is in place,
    so at every moment one complete version exists on disk; an interrupted replacement is undone on the next
    call (the old version is renamed back before anything else happens)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists() and not out_dir.exists():   # a replacement was interrupted between its two renames
        os.replace(old, out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        write(str(tmp))
        os.chmod(tmp, 0o777 & ~_umask())
        if old.exists():
            shutil.rmtree(old)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model: nn.Module, tokenizer, out_dir: Path, extra: Optional[dict] = None) -> None:
    """safetensors weights + config + tokenizer + adakd_model.json (sha256), written atomically."""
    def write(tmp: str) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        info = dict(extra or {})
        if weights.exists():
            info["sha256"] = file_sha256(weights)
        (Path(tmp) / "adakd_model.json").write_text(json.dumps(info, indent=2, default=str))

    save_dir_atomically(Path(out_dir), write)


def verify_checksum(model_dir: Path) -> None:
    """Refuse a model directory whose weights do not match the checksum recorded when it was written."""
    info_path = Path(model_dir) / "adakd_model.json"
    weights = Path(model_dir) / "model.safetensors"
    if not info_path.exists() or not weights.exists():
        return
    try:
        info = json.loads(info_path.read_text())
        expected = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:   # adakd writes it atomically: damage is from outside
        raise ModelLoadError(f"{info_path} is unreadable or corrupt ({e}): delete {model_dir} to rebuild it "
                             "(a cache), or restore it") from None
    if expected and file_sha256(weights) != expected:
        raise ModelLoadError(f"checksum mismatch for {weights}: the file is corrupt or was changed; "
                             "delete the directory to rebuild it")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
