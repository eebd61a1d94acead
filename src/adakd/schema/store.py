"""Registers the schema with Hydra's ConfigStore as `adakd_schema` (conf/config.yaml lists it first)."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from . import RunConfig


def register_configs() -> None:
    ConfigStore.instance().store(name="adakd_schema", node=RunConfig)
