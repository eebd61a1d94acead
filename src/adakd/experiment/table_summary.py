"""One screen across tables: of the paper's comparisons (each row against its reference row), how many changes
in the miniature have the paper's sign, how many of those are significant, and which disagree.

    adakd-report --summary table1,table2,table3,table4,table5 --scale cpu --train-seeds 10,20,30
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .table_render import PAIRS, paper_change, paper_columns, sign_agreement
from .table_stats import AVG, Cell, cells
from .tables import Table


@dataclass
class Comparison:
    table: str
    row: str
    reference: str
    ours: float
    theirs: float
    significant: bool

    @property
    def same_sign(self) -> bool:
        return (self.ours > 0) == (self.theirs > 0)


def comparisons(table: Table, cs: Dict[str, Dict[str, Cell]], pair: Optional[str] = None) -> List[Comparison]:
    """Every row with a reference row and a paper figure for `pair` (default: the table's first paper column)."""
    pairs = paper_columns(table)
    pair = pair if pair in pairs else (pairs[0] if pairs else None)
    out = []
    by_id = {r.id: r for r in table.rows}
    for r in table.rows:
        agreement = None if pair is None else sign_agreement(table, r, cs, pair)
        if agreement is None:
            continue
        out.append(Comparison(table.name, r.label, by_id[r.plain].label, float(cs[r.id][AVG].delta),
                              float(paper_change(table, r, pair)), agreement[1]))
    return out


def render_summary(tables: Sequence[Table], alpha: float = 0.05, pair: str = "qwen2") -> str:
    per_table, every = [], []
    for t in tables:
        comps = comparisons(t, cells(t, alpha), pair)
        every += comps
        per_table.append((t, comps))
    lines = [f"## The paper's comparisons in the miniature (Avg change against each row's reference row; paper: "
             f"{PAIRS.get(pair, pair)} where a table has it)", "",
             "| table | comparisons | same sign | of which significant | opposite sign | of which significant |",
             "|---|---|---|---|---|---|"]

    def counts(cs: List[Comparison]) -> List[str]:
        same = [c for c in cs if c.same_sign]
        other = [c for c in cs if not c.same_sign]
        return [str(len(cs)), str(len(same)), str(sum(c.significant for c in same)), str(len(other)),
                str(sum(c.significant for c in other))]

    for t, comps in per_table:
        lines.append("| " + " | ".join([t.name] + counts(comps)) + " |")
    lines.append("| " + " | ".join(["all"] + counts(every)) + " |")
    disagree = [c for c in every if not c.same_sign]
    if disagree:
        lines += ["", "Opposite sign (ours vs the paper's change; † significant here):"]
        lines += [f"- {c.table}: {c.row} vs {c.reference}: {c.ours:+.2f}{'†' if c.significant else ''} vs "
                  f"{c.theirs:+.2f}" for c in disagree]
    missing = [t.name for t, comps in per_table if not comps]
    if missing:
        lines += ["", "No comparison (rows missing, or no paper figures): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"
