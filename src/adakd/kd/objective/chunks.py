"""Token indices in chunks: the unit every memory-bounded pass of the objective works in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import Tensor


@dataclass
class Chunk:
    index: Tensor  # flat token indices [c] (ascending)
    start: int  # position of the chunk in the index list
    span: Optional[Tuple[int, int]]  # (lo, hi) when the indices are one contiguous run
    # positions in the kept-token list where they are not start .. start + len (the fused path's two phases)
    pos: Optional[Tensor] = None


def split_chunks(index: Tensor, chunk_size: int) -> List[Chunk]:
    index_cpu = index.cpu()
    out = []
    for start in range(0, index.numel(), chunk_size):
        stop = min(start + chunk_size, index.numel())
        lo, hi = int(index_cpu[start]), int(index_cpu[stop - 1]) + 1
        span = (lo, hi) if hi - lo == stop - start else None
        out.append(Chunk(index[start:stop], start, span))
    return out


def take(x: Tensor, ch: Chunk) -> Tensor:
    # A contiguous run is a view (no copy); scattered rows are gathered.
    return x[ch.span[0] : ch.span[1]] if ch.span is not None else x.index_select(0, ch.index)


def flat_view(x: Tensor) -> Optional[Tensor]:
    """[..., V] as a [N, V] view, or None where that needs a copy (e.g. logits[:, :-1])."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return None
