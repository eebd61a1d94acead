"""Test-wide settings and shared fixtures: offline, no W&B, one torch thread, the benchmark data located once.

Markers (pyproject.toml): `integration` (tests that start processes or run the whole pipeline; part of
`make test`, left out by `make test-unit`), `slow` and `gpu` (off by default).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # registered here, not in pyproject.toml: the lead's CI selects these with `-m vllm` inside .venv-vllm
    config.addinivalue_line("markers", "vllm: needs vLLM installed and a model to serve (ADAKD_SMOLLM2_DIR); "
                                       "skipped where vllm is not importable")


def shared_data_dir() -> Path | None:
    env = os.environ.get("ADAKD_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "dolly" / "test.jsonl").exists():
            return cand.resolve()
    return None


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP threads fighting
    another process for one core run many times slower. Processes the tests start set train.threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("benchmark data not found (set ADAKD_DATA_DIR or place ../shared/data beside the repo)")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
