"""Statistics of a table's cells: per-seed scores of a row, mean ± std, the change against the row's plain
partner and a paired t-test over seeds.

Two protocols. One run per row (the paper's): the seeds are the generation seeds of that run. One run per
training seed (Table.train_seeds): each run is first reduced to its mean over the generation seeds, and the
cell is mean ± std over the training seeds of those per-run values, compared with the plain partner paired
by training seed; the generation-seed spread (the std over generation seeds within a run, averaged over the
runs) is kept apart in `Cell.gen_std`. A row that does not train (the teacher) is one run whatever the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from scipy import stats

from .tables import Row, Table

AVG = "avg"


def bench_seeds(v: Dict[str, Any]) -> List[float]:
    """A benchmark's per-seed scores from its metrics.json entry ({mean, per_seed, ...})."""
    return [float(x) for x in (v.get("per_seed") or [v["mean"]])]


def seed_avgs(parts: Sequence[Sequence[float]]) -> List[float]:
    """The per-seed mean over benchmarks (their per-seed scores, same seeds in the same order)."""
    n = min(len(p) for p in parts)
    if any(len(p) != n for p in parts):   # seeds differ between benchmarks: no per-seed average
        return [sum(sum(p) / len(p) for p in parts) / len(parts)]
    return [sum(p[i] for p in parts) / len(parts) for i in range(n)]


def seed_scores(row: Row, col: str, avg_over: Sequence[str]) -> Optional[List[float]]:
    """Per-seed scores of a row in a column (a benchmark, or AVG: the per-seed mean over avg_over)."""
    if row.status != "ok":
        return None
    if col != AVG:
        v = row.rouge.get(col)
        return None if v is None else bench_seeds(v)
    parts = [seed_scores(row, b, ()) for b in avg_over]
    parts = [p for p in parts if p is not None]
    if not parts or len(parts) < len(avg_over):
        return None
    return seed_avgs(parts)


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
    gen_std: Optional[float] = None     # training-seed protocol: mean over runs of the generation-seed std


def run_values(row: Row, col: str, avg_over: Sequence[str]) -> Tuple[Dict[int, float], List[float]]:
    """({training seed: the run's mean over generation seeds}, [each distinct run's generation-seed std])."""
    values: Dict[int, float] = {}
    spreads: Dict[str, float] = {}
    for seed, run in row.runs.items():
        xs = seed_scores(Row(id=row.id, label=row.label, status="ok", rouge=run["rouge"]), col, avg_over)
        if xs:
            m, s = mean_std(xs)
            values[seed] = m
            spreads[str(run.get("dir", seed))] = s
    return values, list(spreads.values())


def _train_seed_cell(r: Row, partner: Optional[Row], col: str, avg_over: Sequence[str], alpha: float) -> Cell:
    vals, spreads = run_values(r, col, avg_over)
    c = Cell()
    if not vals:
        return c
    distinct = len(spreads)   # a row that does not train has one run for every seed
    xs = [vals[s] for s in sorted(vals)] if distinct > 1 else [next(iter(vals.values()))]
    c.mean, c.std = mean_std(xs)
    c.n = len(xs)
    c.gen_std = sum(spreads) / len(spreads)
    if partner is not None:
        pv, _ = run_values(partner, col, avg_over)
        common = sorted(set(vals) & set(pv))
        if common:
            c.delta = c.mean - mean_std([pv[s] for s in sorted(pv)])[0]
            c.p = paired_p([vals[s] for s in common], [pv[s] for s in common])
            c.sig = c.p is not None and c.p < alpha
    return c


def cells(table: Table, alpha: float = 0.05) -> Dict[str, Dict[str, Cell]]:
    """{row id: {column: Cell}} for the benchmark columns and AVG."""
    by_id = {r.id: r for r in table.rows}
    out: Dict[str, Dict[str, Cell]] = {}
    for r in table.rows:
        out[r.id] = {}
        if table.train_seeds:
            partner = by_id.get(r.plain) if r.plain else None
            for col in table.benches + [AVG]:
                out[r.id][col] = _train_seed_cell(r, partner, col, table.avg_over, alpha)
            continue
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
