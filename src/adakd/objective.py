"""Stable public name (the project's contract): `adakd.objective.adakd_loss` and friends.

The objective itself lives in adakd.kd.objective (reading order in its __init__).
"""
from .kd.objective import (IGNORE_INDEX, IMPLS, STAT_KEYS, HiddenStates, KDObjective, adakd_loss, align_vocab,
                           build_objective, select_tokens, shared_vocab, token_values)

__all__ = [
    "adakd_loss", "align_vocab", "build_objective", "HiddenStates", "IGNORE_INDEX", "IMPLS", "KDObjective",
    "select_tokens", "shared_vocab", "STAT_KEYS", "token_values",
]
