"""Rendering: a run's own table (printed at the end of a run) and a sweep table as markdown, CSV and LaTeX."""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Dict, List, Optional, Tuple

from .table_stats import AVG, Cell
from .tables import Row, Table

PAIRS = {"qwen2": "Qwen2-7B→1.5B", "openllama2": "OpenLLaMA2-7B→3B", "gpt2": "GPT-2 XL→base"}
DAGGER = "†"


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
    seeds = metrics.get("protocol", {}).get("seeds") or []
    # the count says how far to trust the ± : a std from two seeds is a rough estimate of the spread
    over = f"over {len(seeds)} generation seeds: {', '.join(map(str, seeds))}" if seeds else "over seeds"
    lines = [f"ROUGE-L (mean ± std {over})", head, sep]
    for name, r, avg in rows:
        cells = [_cell(r[b]) if b in r else "-" for b in benches]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg:.2f} |")
    return "\n".join(lines)


def paper_columns(table: Table) -> List[str]:
    keys: List[str] = []
    for r in table.rows:
        keys += [k for k in r.paper if k not in keys]
    if table.scale in keys:
        return [table.scale]
    return keys


def _paper_avg(row: Row, pair: str) -> Optional[float]:
    v = row.paper.get(pair)
    if isinstance(v, dict):
        v = v.get(AVG, v.get("Avg"))
    return None if v is None else float(v)


def _fmt(c: Cell, with_delta: bool, tex: bool = False) -> str:
    if c.mean is None:
        return "–"
    if not math.isfinite(c.mean):   # flagged, never printed as a plain number (problems() names the row)
        return "NaN!"
    pm = " $\\pm$ " if tex else " ± "
    s = f"{c.mean:.2f}" + (f"{pm}{c.std:.2f}" if c.n > 1 else "")
    if with_delta and c.delta is not None:
        mark = ("$^\\dagger$" if tex else DAGGER) if c.sig else ""
        s += f" ({c.delta:+.2f}{mark})"
    return s


def _paper_cell(table: Table, row: Row, pair: str) -> str:
    v = _paper_avg(row, pair)
    if v is None:
        return "–"
    by_id = {r.id: r for r in table.rows}
    base = _paper_avg(by_id[row.plain], pair) if row.plain in by_id else None
    return f"{v:.2f}" + (f" ({v - base:+.2f})" if base is not None else "")


def paper_change(table: Table, row: Row, pair: str) -> Optional[float]:
    """The paper's change of `row` against its reference row (`plain`), on the Avg of pair `pair`."""
    by_id = {r.id: r for r in table.rows}
    v = _paper_avg(row, pair)
    base = _paper_avg(by_id[row.plain], pair) if row.plain in by_id else None
    return None if v is None or base is None else v - base


def sign_agreement(table: Table, row: Row, cs: Dict[str, Dict[str, Cell]], pair: str) -> Optional[Tuple[bool, bool]]:
    """(our Avg change has the paper's sign, ours is significant), or None where either change is missing."""
    theirs, ours = paper_change(table, row, pair), cs[row.id][AVG]
    if theirs is None or ours.delta is None or not math.isfinite(ours.delta):
        return None
    return (ours.delta > 0) == (theirs > 0), ours.sig


def _sign_cell(agreement: Optional[Tuple[bool, bool]], tex: bool = False) -> str:
    if agreement is None:
        return "–"
    same, sig = agreement
    return ("yes" if same else "no") + ((r"$^\dagger$" if tex else DAGGER) if sig else "")


def _sign_pairs(table: Table) -> List[str]:
    """The paper columns for which some row has a change to compare."""
    return [p for p in paper_columns(table) if any(paper_change(table, r, p) is not None for r in table.rows)]


def _header(table: Table, compare: bool) -> List[str]:
    avg = "Avg" if table.avg_over == table.benches else f"Avg ({', '.join(table.avg_over)})"
    cols = ["Method"] + list(table.benches) + [avg]
    if table.train_seeds:
        cols += ["Avg: generation-seed sd"]
    if compare:
        cols += [f"paper Avg ({PAIRS.get(p, p)})" for p in paper_columns(table)]
        cols += [f"same sign as paper ({PAIRS.get(p, p)})" for p in _sign_pairs(table)]
    return cols


def table_rows(table: Table, cs: Dict[str, Dict[str, Cell]], compare: bool,
               tex: bool = False) -> List[List[str]]:
    rows = []
    for r in table.rows:
        line = [_tex_escape(r.label) if tex else r.label]
        line += [_fmt(cs[r.id][c], r.kind == "adakd", tex) for c in table.benches + [AVG]]
        if table.train_seeds:
            g = cs[r.id][AVG].gen_std
            line.append("–" if g is None else f"{g:.2f}")
        if compare:
            line += [_paper_cell(table, r, p) for p in paper_columns(table)]
            line += [_sign_cell(sign_agreement(table, r, cs, p), tex) for p in _sign_pairs(table)]
        rows.append(line)
    return rows


def _finite(v: Any) -> bool:
    """A benchmark's result ({mean, per_seed, ...} or a number) holds only finite numbers."""
    values = [v.get("mean"), *(v.get("per_seed") or [])] if isinstance(v, dict) else [v]
    try:
        return all(math.isfinite(float(x)) for x in values)
    except (TypeError, ValueError):
        return False


def problems(table: Table) -> List[str]:
    out = []
    for r in table.rows:
        if r.status == "ok":
            bad = sorted(b for b, v in (r.rouge or {}).items() if not _finite(v))
            if bad:
                out.append(f"`{r.id}` ({r.label}): not a number in {', '.join(bad)} ({r.run_dir}/metrics.json)")
            continue
        what = {"missing": "not run yet", "failed": "failed", "error": "cannot be built",
                "unfinished": "started but not finished (killed, or still running; the same command resumes it)"
                }[r.status]
        detail = f": {r.error.strip().splitlines()[0]}" if r.error else ""
        where = f" ({r.run_dir})" if r.run_dir else ""
        out.append(f"`{r.id}` ({r.label}): {what}{detail}{where}")
    return out


def _caption(table: Table) -> str:
    seeds = ", ".join(str(s) for s in table.seeds)
    if table.train_seeds:
        train = ", ".join(str(s) for s in table.train_seeds)
        return (f"ROUGE-L, mean ± std over the training seeds ({train}) of each run's mean over the generation "
                f"seeds ({seeds}); the teacher does not train (one run). Scale {table.scale or 'default'} "
                f"(model {table.model}). In parentheses: the change against the row's plain partner; "
                f"{DAGGER}: significant (paired t-test over training seeds, p < 0.05). Last column: the "
                f"generation-seed spread of Avg (std over generation seeds within a run, mean over runs). "
                f"Avg: mean over {', '.join(table.avg_over)}.")
    return (f"ROUGE-L, mean ± std over the generation seeds ({seeds}); scale {table.scale or 'default'} "
            f"(model {table.model}). In parentheses: the change against the row's plain partner; "
            f"{DAGGER}: significant (paired t-test over seeds, p < 0.05). Avg: mean over "
            f"{', '.join(table.avg_over)}.")


def render_markdown(table: Table, cs, compare: bool = False) -> str:
    head = _header(table, compare)
    caption = _caption(table)
    if compare and _sign_pairs(table):
        caption += (" Same sign as paper: whether the Avg change against the reference row has the sign of the "
                    f"paper's change (yes / no; {DAGGER} where ours is significant).")
    lines = [f"## {table.spec.get('title', table.name)}", "", caption, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(table, cs, compare)]
    probs = problems(table)
    if probs:
        lines += ["", f"**Missing or failed rows ({len(probs)})** — the table is incomplete:"]
        lines += [f"- {p}" for p in probs]
    return "\n".join(lines) + "\n"


def render_csv(table: Table, cs, compare: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = table.benches + [AVG]
    head = ["row", "label", "plain", "status", "run_dir"]
    for c in cols:
        head += [f"{c}_mean", f"{c}_std", f"{c}_n_seeds", f"{c}_delta", f"{c}_p", f"{c}_significant"]
        if table.train_seeds:
            head.append(f"{c}_gen_std")
    pairs = paper_columns(table)
    head += [f"paper_{p}_avg" for p in pairs]
    signs = _sign_pairs(table)
    head += [h for p in signs for h in (f"paper_{p}_change", f"same_sign_{p}")]
    w.writerow(head)
    for r in table.rows:
        line: List[Any] = [r.id, r.label, r.plain or "", r.status, r.run_dir or ""]
        for c in cols:
            x = cs[r.id][c]
            line += [_num(x.mean), _num(x.std), x.n, _num(x.delta), _num(x.p, 4), int(x.sig)]
            if table.train_seeds:
                line.append(_num(x.gen_std))
        line += [_num(_paper_avg(r, p)) for p in pairs]
        for p in signs:
            agreement = sign_agreement(table, r, cs, p)
            line += [_num(paper_change(table, r, p)), "" if agreement is None else int(agreement[0])]
        w.writerow(line)
    return buf.getvalue()


def _num(v: Optional[float], digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _tex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}", "→": r"$\rightarrow$", "×": r"$\times$",
           "τ": r"$\tau$", "–": "--", "—": "---", "<": r"$<$", ">": r"$>$"}
    return "".join(rep.get(ch, ch) for ch in s)


def render_tex(table: Table, cs, compare: bool = False) -> str:
    head = [_tex_escape(h) for h in _header(table, compare)]
    body = table_rows(table, cs, compare, tex=True)
    lines = [r"% generated by adakd-report; needs \usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + _tex_escape(table.spec.get("title", table.name)) + ". "
             + _tex_escape(_caption(table)).replace(_tex_escape(DAGGER), r"$^\dagger$").replace("±", r"$\pm$")
             + "}",
             r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    lines += [" & ".join(c.replace("–", "--") for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def bar_data(table: Table, cs) -> List[Dict[str, Any]]:
    return [{"label": r.label, "mean": cs[r.id][AVG].mean, "std": cs[r.id][AVG].std, "kind": r.kind,
             "sig": cs[r.id][AVG].sig} for r in table.rows]
