"""Statistics of a table's cells: per-seed scores of a row, mean ± std, the change against the row's plain
partner and a paired t-test over seeds."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from scipy import stats

from .tables import Row, Table

AVG = "avg"


def seed_scores(row: Row, col: str, avg_over: Sequence[str]) -> Optional[List[float]]:
    """Per-seed scores of a row in a column (a benchmark, or AVG: the per-seed mean over avg_over)."""
    if row.status != "ok":
        return None
    if col != AVG:
        v = row.rouge.get(col)
        if v is None:
            return None
        return [float(x) for x in (v.get("per_seed") or [v["mean"]])]
    parts = [seed_scores(row, b, ()) for b in avg_over]
    parts = [p for p in parts if p is not None]
    if not parts or len(parts) < len(avg_over):
        return None
    n = min(len(p) for p in parts)
    if any(len(p) != n for p in parts):   # seeds differ between benchmarks: no per-seed average
        return [sum(sum(p) / len(p) for p in parts) / len(parts)]
    return [sum(p[i] for p in parts) / len(parts) for i in range(n)]


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paired_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test over seeds (same seeds, same order); None where it cannot be computed."""
    if len(a) != len(b) or len(a) < 2:
        return None
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_std(d)
    if s == 0.0:     # a constant shift: exactly zero (no change) or infinitely significant
        return 1.0 if m == 0.0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


@dataclass
class Cell:
    mean: Optional[float] = None
    std: Optional[float] = None
    n: int = 0
    delta: Optional[float] = None
    p: Optional[float] = None
    sig: bool = False


def cells(table: Table, alpha: float = 0.05) -> Dict[str, Dict[str, Cell]]:
    """{row id: {column: Cell}} for the benchmark columns and AVG."""
    by_id = {r.id: r for r in table.rows}
    out: Dict[str, Dict[str, Cell]] = {}
    for r in table.rows:
        out[r.id] = {}
        for col in table.benches + [AVG]:
            xs = seed_scores(r, col, table.avg_over)
            c = Cell()
            if xs:
                c.mean, c.std = mean_std(xs)
                c.n = len(xs)
                partner = by_id.get(r.plain) if r.plain else None
                ys = seed_scores(partner, col, table.avg_over) if partner else None
                if ys:
                    c.delta = c.mean - mean_std(ys)[0]
                    c.p = paired_p(xs, ys)
                    c.sig = c.p is not None and c.p < alpha
            out[r.id][col] = c
    return out
