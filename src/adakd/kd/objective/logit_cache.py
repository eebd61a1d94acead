"""The fused path's pass-1 logit cache: the hardest tokens' logits, kept for pass 2 within a memory budget."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .chunks import Chunk


class LogitCache:
    """Pass-1 logits of the hardest tokens scored so far, so that pass 2 does not recompute them.

    Fused path with scoring only. Pass 1 computes every valid token's student and teacher logits to
    score it; pass 2 needs them again for the kept tokens. Recomputing costs two LM-head matmuls per
    kept token; this keeps up to `slots` tokens' rows (both sides, as the matmuls returned them), those
    with the highest scores so far, ties to the earlier token, as `select_tokens` ranks. With
    slots = k (all kept tokens fit) the cache ends holding exactly the kept tokens. Which tokens it
    holds changes only the speed: pass 2 takes a kept token's rows from here when present, else
    recomputes them; the values are the same logits either way.
    """

    def __init__(self, slots: int, n_flat: int, vocab: int, dtypes: Tuple[torch.dtype, ...], device):
        self.rows_by_side = [torch.empty(slots, vocab, dtype=d, device=device) for d in dtypes]
        self.score = torch.full((slots,), -math.inf, dtype=torch.float64, device=device)
        self.token = torch.full((slots,), -1, dtype=torch.long, device=device)
        self.slot_of = torch.full((n_flat,), -1, dtype=torch.long, device=device)  # flat token -> slot
        self.used = 0

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
        for buf, r in zip(self.rows_by_side, rows):
            buf.index_copy_(0, slots, r.index_select(0, take))
        tokens = index[take]
        self.score[slots] = scores[take]
        self.token[slots] = tokens
        self.slot_of[tokens] = slots

    def rows(self, side: int, ch: Chunk, compute) -> Tensor:
        """Rows of `ch` for side 0 (student) / 1 (teacher): copies of held rows, the others computed."""
        slots = self.slot_of[ch.index]
        hit = slots >= 0
        n_hit = int(hit.sum())
        if n_hit == 0:
            return compute(ch)
        buf = self.rows_by_side[side]
        if n_hit == slots.numel():
            return buf.index_select(0, slots)  # a copy: pass 2 may divide it in place
        out = buf.new_empty((slots.numel(), buf.shape[1]))
        out[hit] = buf.index_select(0, slots[hit])
        miss = (~hit).nonzero().squeeze(1)
        out[miss] = compute(Chunk(ch.index[miss], 0, None))
        return out
