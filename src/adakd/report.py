"""Results -> tables. A run's own table (its row and its baseline rows) is printed at the end of a run;
sweep tables of the paper's shape are built from the local result files only.
"""
from __future__ import annotations

from typing import Any, Dict, List


def _cell(v: Dict[str, Any]) -> str:
    if len(v.get("per_seed", [])) > 1:
        return f"{v['mean']:.2f} ± {v['std']:.2f}"
    return f"{v['mean']:.2f}"


def results_table(metrics: Dict[str, Any], label: str = "this run") -> str:
    """Markdown table: baseline rows (teacher, untrained student, SFT) then this run; a column per benchmark."""
    benches: List[str] = list(metrics["rougeL"])
    rows = []
    for b in metrics.get("baselines", {}).values():
        rows.append((b["label"], b["rougeL"], b["avg"]))
    rows.append((label, metrics["rougeL"], metrics["avg"]))
    head = "| model | " + " | ".join(benches) + " | Avg |"
    sep = "|---|" + "---|" * (len(benches) + 1)
    lines = ["ROUGE-L (mean ± std over seeds)", head, sep]
    for name, r, avg in rows:
        cells = [_cell(r[b]) if b in r else "-" for b in benches]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg:.2f} |")
    return "\n".join(lines)
