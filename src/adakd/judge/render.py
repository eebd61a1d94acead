"""A comparison's results as the ROUGE-L tables are rendered: markdown, CSV, a bar plot, a W&B table.

One row per benchmark and an `overall` row: pairs asked, pairs judged, win / tie / loss counts and rates with
the bootstrap interval, the position-consistency rate, the share of decisive verdicts naming the answer shown
first (0.5 for a judge without position bias), failures by kind (pairs; requests in parentheses) and tokens.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..experiment.plots import _figure, _save
from ..tracking import make_logger
from .scoring import OUTCOMES, Summary

log = logging.getLogger(__name__)
COLORS = {"win": "#1e8449", "tie": "#bdc3c7", "loss": "#c0392b"}


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _rate_ci(s: Summary, outcome: str) -> str:
    r = s.rate(outcome)
    if r is None:
        return "–"
    ci = s.ci.get(outcome)
    return _pct(r) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


HEADER = ["benchmark", "pairs", "judged", "win", "tie", "loss", "win % [CI]", "tie % [CI]", "loss % [CI]",
          "consistent %", "first shown %", "parse failures", "API failures", "tokens"]


def table_rows(scores: Dict[str, Summary]) -> List[List[str]]:
    rows = []
    for bench, s in scores.items():
        rows.append([bench, str(s.pairs), str(s.judged), *(str(s.counts[o]) for o in OUTCOMES),
                     *(_rate_ci(s, o) for o in OUTCOMES), _pct(s.consistency), _pct(s.first_position_rate),
                     f"{s.failed_pairs['parse']} ({s.failed_requests['parse']})",
                     f"{s.failed_pairs['api']} ({s.failed_requests['api']})",
                     f"{s.prompt_tokens + s.completion_tokens:,}"])
    return rows


def render_markdown(title: str, caption: str, scores: Dict[str, Summary]) -> str:
    lines = [f"## {title}", "", caption, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(scores)]
    return "\n".join(lines) + "\n"


def _num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.4f}"


def render_csv(scores: Dict[str, Summary]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["benchmark", "pairs", "judged"]
    for o in OUTCOMES:
        head += [o, f"{o}_rate", f"{o}_ci_low", f"{o}_ci_high"]
    head += ["consistent", "consistency", "first_position_rate", "parse_failed_pairs", "parse_failed_requests",
             "api_failed_pairs", "api_failed_requests", "prompt_tokens", "completion_tokens"]
    w.writerow(head)
    for bench, s in scores.items():
        line: List[Any] = [bench, s.pairs, s.judged]
        for o in OUTCOMES:
            ci = s.ci.get(o)
            line += [s.counts[o], _num(s.rate(o)), _num(ci[0] if ci else None), _num(ci[1] if ci else None)]
        line += [s.consistent, _num(s.consistency), _num(s.first_position_rate), s.failed_pairs["parse"],
                 s.failed_requests["parse"], s.failed_pairs["api"], s.failed_requests["api"], s.prompt_tokens,
                 s.completion_tokens]
        w.writerow(line)
    return buf.getvalue()


def plot(scores: Dict[str, Summary], path: Path, title: str) -> Optional[Path]:
    """Stacked win / tie / loss shares per benchmark, the win share's interval as an error bar."""
    names = [b for b, s in scores.items() if s.judged]
    if not names:
        return None
    fig, (ax,) = _figure(7.5, 0.45 * len(names) + 1.8)
    ys = list(range(len(names)))[::-1]
    left = [0.0] * len(names)
    for o in OUTCOMES:
        vals = [100 * (scores[b].rate(o) or 0.0) for b in names]
        ax.barh(ys, vals, left=left, color=COLORS[o], edgecolor="black", linewidth=0.5, label=o)
        left = [a + v for a, v in zip(left, vals)]
    for y, b in zip(ys, names):
        ci = scores[b].ci.get("win")
        if ci:
            ax.plot([100 * ci[0], 100 * ci[1]], [y, y], color="black", linewidth=1.2)
        ax.text(101, y, f"n={scores[b].judged}", va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 112)
    ax.set_xlabel("% of judged pairs (line: the win share's bootstrap interval)", fontsize=8)
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def log_to_wandb(logger_cfg, out_dir: Path, name: str, config: Dict[str, Any], scores: Dict[str, Summary],
                 png: Optional[Path]) -> None:
    """Mirror the table (and the plot) to W&B; the local files stay the source of truth."""
    logger = make_logger(logger_cfg, out_dir, run_id=f"judge-{name}", name=f"judge-{name}", config=config,
                         tags=["judge"])
    try:
        logger.log_table(f"judge/{name}", HEADER, table_rows(scores))
        if png is not None:
            logger.log_image(f"judge/{name}_bars", png)
        s = scores["overall"]
        logger.summary({**{f"judge/{o}_rate": s.rate(o) for o in OUTCOMES}, "judge/consistency": s.consistency,
                        "judge/parse_failed_pairs": s.failed_pairs["parse"],
                        "judge/api_failed_pairs": s.failed_pairs["api"]})
    finally:
        logger.finish()
