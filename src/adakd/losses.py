"""Stable public name (the project's contract): `adakd.losses.per_token` and the divergence registry.

The divergences live in adakd.kd.losses, one class per module.
"""
from .kd.losses import DIVERGENCES, Divergence, build_divergence, per_token

__all__ = ["DIVERGENCES", "Divergence", "build_divergence", "per_token"]
