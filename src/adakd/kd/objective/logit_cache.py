"""The fused path's pass-1 logit cache: the hardest tokens' logits, kept for pass 2 within a memory budget.

The budget, unless set (`train.fused_logit_cache_mb`), follows from the fused loss's memory floor (`floor_bytes`):
the cache may take what keeps the whole loss within twice the floor (`auto_budget_bytes`).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor



def floor_bytes(n_tokens: int, vocab: int, hidden: int, chunk: int, *, grad_bytes: int = 4,
                hidden_bytes: int = 4, compute_bytes: int = 4) -> int:
    """The least any fused KD loss holds at once (its memory floor): dL/dW [V, H] (accumulated in float32 at
    least), dL/dhidden [N, H], and one chunk of logits per role: the student's, the teacher's and the
    gradient w.r.t. the student's, in the compute dtype (float32 at least)."""
    rows = min(chunk, n_tokens)
    return vocab * hidden * grad_bytes + n_tokens * hidden * hidden_bytes + 3 * rows * vocab * compute_bytes


def auto_budget_bytes(n_tokens: int, vocab: int, hidden: int, chunk: int, *, grad_bytes: int = 4,
                      hidden_bytes: int = 4, compute_bytes: int = 4, with_weight_grad: bool = False) -> int:
    """The cache budget that keeps the fused loss with LATF within twice its floor.

    At the end of pass 1 the cache is held with the chunk in flight: its student and teacher rows and the
    two log-softmax buffers of the difficulty score (four chunks); dL/dhidden exists from pass 2 on. dL/dW
    is allocated after the cache is freed where the cache holds the compute dtype (the usual case: float32
    rows); a narrower cache (bf16 logits) is held with dL/dW (`with_weight_grad`), and the budget is smaller
    by dL/dW.
    """
    rows = min(chunk, n_tokens)
    floor = floor_bytes(n_tokens, vocab, hidden, chunk, grad_bytes=grad_bytes, hidden_bytes=hidden_bytes,
                        compute_bytes=compute_bytes)
    held = n_tokens * hidden * hidden_bytes + 4 * rows * vocab * compute_bytes
    if with_weight_grad:
        held += vocab * hidden * grad_bytes
    return max(0, 2 * floor - held)


class LogitCache:
    """Pass-1 logits of the hardest tokens scored so far, so that pass 2 does not recompute them.

    Fused path with scoring only. Pass 1 computes every valid token's student and teacher logits to
    score it; pass 2 needs them again for the kept tokens. Recomputing costs two LM-head matmuls per
    kept token; this keeps up to `slots` tokens' rows (both sides, as the matmuls returned them), those
    with the highest scores so far, ties to the earlier token, as `select_tokens` ranks. With
    slots <= k the cache ends holding kept tokens only (exactly the kept tokens when slots = k). Which
    tokens it holds changes only the speed: pass 2 (`chunked.FusedHiddenLoss`) reads the held tokens'
    rows from here and recomputes the others; the values are the same logits either way.
    """

    def __init__(self, slots: int, n_flat: int, vocab: int, dtypes: Tuple[torch.dtype, ...], device):
        self.rows_by_side: List[Optional[Tensor]] = [
            torch.empty(slots, vocab, dtype=d, device=device) for d in dtypes
        ]
        self.score = torch.full((slots,), -math.inf, dtype=torch.float64, device=device)
        self.token = torch.full((slots,), -1, dtype=torch.long, device=device)
        self.slot_of = torch.full((n_flat,), -1, dtype=torch.long, device=device)  # flat token -> slot
        self.used = 0

    @property
    def slots(self) -> int:
        return self.score.numel()

    def fill(self, index: Tensor, scores: Tensor) -> None:
        """Pass 1, first: slots 0 .. c - 1 were written with the rows of tokens `index` (ascending) in place."""
        c = index.numel()
        if self.used or c > self.slots:
            raise ValueError("fill() comes first, with at most one token per slot")
        self.score[:c] = scores.to(self.score.dtype)
        self.token[:c] = index
        self.slot_of[index] = torch.arange(c, device=index.device)
        self.used = c

    def offer(self, index: Tensor, rows: Tuple[Tensor, Tensor], scores: Tensor) -> None:
        """Pass 1: the rows of tokens `index` (ascending, later than any offered before) and their scores."""
        n_slots, c = self.score.numel(), index.numel()
        scores = scores.to(self.score.dtype)
        if self.used + c <= n_slots:  # room for all: fill in order (plain copies, no index_put)
            lo, hi = self.used, self.used + c
            for buf, r in zip(self.rows_by_side, rows):
                buf[lo:hi].copy_(r)
            self.score[lo:hi] = scores
            self.token[lo:hi] = index
            self.slot_of[index] = torch.arange(lo, hi, device=index.device)
            self.used = hi
            return
        # Full: the best n_slots of (held, new) by score, ties to the earlier token (two stable sorts:
        # by token, then by score; slots hold tokens in no particular order once rows were replaced).
        by_token = torch.sort(torch.cat([self.token, index]), stable=True).indices
        by_score = torch.sort(torch.cat([self.score, scores])[by_token], descending=True, stable=True).indices
        order = by_token[by_score[:n_slots]]
        take = order[order >= n_slots] - n_slots
        self.used = n_slots  # any empty slot is filled now: the in-order fill is over
        if take.numel() == 0:
            return
        kept_old = torch.zeros(n_slots, dtype=torch.bool, device=index.device)
        kept_old[order[order < n_slots]] = True
        slots = (~kept_old).nonzero().squeeze(1)  # as many as `take`
        evicted = self.token[slots]
        self.slot_of[evicted[evicted >= 0]] = -1
        # row by row: no [taken, V] temporary (at most a chunk of rows per side)
        for slot, row in zip(slots.tolist(), take.tolist()):
            for buf, r in zip(self.rows_by_side, rows):
                buf[slot].copy_(r[row])
        tokens = index[take]
        self.score[slots] = scores[take]
        self.token[slots] = tokens
        self.slot_of[tokens] = slots

    def release(self, side: int) -> None:
        """Frees one side's rows (the fused pass 2 has read them)."""
        self.rows_by_side[side] = None
