"""Test-wide settings: offline, no W&B, and the shared benchmark data located once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("ADAKD_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "dolly" / "test.jsonl").exists():
            return cand.resolve()
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("benchmark data not found (set ADAKD_DATA_DIR or place ../shared/data beside the repo)")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
