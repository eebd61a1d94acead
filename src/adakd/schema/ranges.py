"""A setting's valid interval, written once where the setting is defined and read by every check of it (the
config check before a run, the constructor that uses the value)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Range:
    """[lo, hi]; an end may be open, or missing (unbounded)."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        lo, hi = self.lo, self.hi
        return not ((lo is not None and (value <= lo if self.lo_open else value < lo))
                    or (hi is not None and (value >= hi if self.hi_open else value > hi)))

    def text(self, bound=str) -> str:
        """e.g. "(0.0, 1.0]" (`bound` formats each end; a missing end is -inf / inf)."""
        lo = "-inf" if self.lo is None else bound(self.lo)
        hi = "inf" if self.hi is None else bound(self.hi)
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
