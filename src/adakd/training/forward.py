"""Model forwards at the response positions only, and the cross-entropy term.

Labels are token-aligned (-100 on the prompt and the padding); `response_positions` shifts them to
next-token targets. The body runs on the whole sequence, but logits are computed only for the N response
positions ([N, V], not [B, L, V]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import lm_parts


def response_positions(labels: torch.Tensor):
    """Shift token-aligned labels to next-token targets; return the mask of positions that are trained on."""
    targets = labels[:, 1:]
    return targets, targets != -100


def hidden_at(model: nn.Module, input_ids, attention_mask, mask) -> torch.Tensor:
    """Final hidden states at the masked positions only ([N, H]); logits are then computed for N rows, not B*L."""
    body, _ = lm_parts(model)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state[:, :-1][mask]


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return lm_parts(model)[1](hidden)


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token CE in fp32; a connected zero when there is no response token."""
    return F.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0


def chunked_ce(hidden, head, targets, chunk: int) -> torch.Tensor:
    """Mean token CE without materialising all [N, V] logits at once (the fused path's CE term)."""
    n = targets.numel()
    if n == 0:
        return hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        logits = head(hidden[i:i + chunk]).float()
        total = total + F.cross_entropy(logits, targets[i:i + chunk], reduction="sum")
    return total / n
