"""Compose the real Hydra config in tests, exactly as `adakd-run` would."""
from __future__ import annotations

from typing import List

from hydra import compose, initialize_config_module

from adakd.experiment.config_store import register_configs

register_configs()


def compose_cfg(overrides: List[str] | None = None, name: str = "config"):
    with initialize_config_module("adakd.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides or []))
