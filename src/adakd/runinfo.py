"""Run identity and provenance: the config hash that names a run directory, and what run_info.json records."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


PACKAGES = ["torch", "transformers", "tokenizers", "hydra-core", "omegaconf", "wandb", "rouge-score", "peft",
            "numpy", "adakd"]


def config_hash(obj: Any, n: int = 10) -> str:
    """Stable short hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict:
    v = {}
    for p in PACKAGES:
        try:
            v[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            v[p] = None
    return v


def device_info() -> dict:
    info = {"cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(), "cpu": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def provenance() -> dict:
    """What a run is computed with (commit, versions, platform, device, command line) and when it started: taken
    when the run starts, written to run_info.json with what the run cost (experiment.runner)."""
    return {
        "git_commit": git_commit(), "versions": versions(), "python": sys.version.split()[0],
        "platform": platform.platform(), "device": device_info(), "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
