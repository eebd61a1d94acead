"""Results -> tables. A run's own table (its row and its baseline rows) is printed at the end of a run;
sweep tables of the paper's shape are built from the local result files only.

    python -m adakd.report --table table2 --scale cpu [--compare] [override ...]

renders a table preset (experiments/<table>.yaml; `--table smoke` is experiments/smoke-table.yaml): for each
row it composes the row's config exactly as the sweep's job did (preset + scale + the overrides given, which
must be the sweep's own, + the row's overrides), finds the run directory with adakd.runner.run_dir_for
and reads its metrics.json. Cells: mean ± std (ddof=1) over the generation seeds, and for a row with a
`plain` partner the change against it, marked † where a paired t-test over the seeds gives p < 0.05.
Writes <output_root>/tables/<table>[-<scale>].{md,csv,tex,png} (the scale suffix unless it is the table's
default scale: smoke for the smoke table, cpu otherwise), prints the markdown, logs the table and the bar
chart to W&B (offline by default; not again when the table is unchanged) and exits 1 when a row's run is
missing or failed (listed under the table).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

TABLE_PRESETS = {"smoke": "smoke-table"}      # --table name -> experiment preset, where they differ
PAIRS = {"qwen2": "Qwen2-7B→1.5B", "openllama2": "OpenLLaMA2-7B→3B", "gpt2": "GPT-2 XL→base"}
DAGGER = "†"
INCOMPLETE = 3          # exit status of --only-if-complete when some row has not finished
AVG = "avg"


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


# ============================================================================================ sweep tables
@dataclass
class Row:
    id: str
    label: str
    overrides: List[str] = field(default_factory=list)
    plain: Optional[str] = None            # id of the row this one is compared against
    paper: Dict[str, Any] = field(default_factory=dict)   # pair -> avg (number) or {benchmark|avg: number}
    kind: str = "plain"                     # plain | adakd (has a partner) | baseline (teacher, SFT)
    run_dir: Optional[str] = None
    status: str = "missing"                 # ok | missing | failed | error (config does not compose)
    error: Optional[str] = None
    rouge: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    baselines: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Table:
    name: str
    preset: str
    scale: Optional[str]
    spec: Dict[str, Any]
    rows: List[Row]
    benches: List[str]
    avg_over: List[str]
    out_stem: Path
    model: str = ""
    seeds: List[int] = field(default_factory=list)
    logger_cfg: Any = None


def preset_for(table: str) -> str:
    return TABLE_PRESETS.get(table, table)


def _is_hydra_override(o: str) -> bool:
    key = o.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.startswith("-")


def _composer():
    """A compose(overrides) function on the package's configs (standalone or inside a Hydra app)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from .schema import register_configs
    register_configs()
    if GlobalHydra.instance().is_initialized():
        return (lambda ovs: compose("config", overrides=ovs)), None
    ctx = initialize_config_module("adakd.conf", version_base="1.3")
    ctx.__enter__()
    return (lambda ovs: compose("config", overrides=ovs)), ctx


def collect(table: str, scale: Optional[str] = None, overrides: Sequence[str] = ()) -> Table:
    """Compose the table preset and each of its rows; read each row's results from its run directory."""
    from omegaconf import OmegaConf

    from .runner import ROW_LABELS, is_finished, run_dir_for
    from .sweep import FAILURE_FILE, strip_table

    preset = preset_for(table)
    extra = [o for o in overrides if not _is_hydra_override(o)]
    base_ovs = [f"experiment={preset}"] + ([f"scale={scale}"] if scale and scale != "none" else []) + extra
    compose, ctx = _composer()
    try:
        from hydra.errors import MissingConfigException
        try:
            base = compose(base_ovs)
        except MissingConfigException as e:
            if f"experiment/{preset}" not in str(e):
                raise
            names = ", ".join(sorted(available_tables()))
            raise SystemExit(f"unknown table {table!r}; tables: {names}") from None
        if base.get("table") is None:
            raise SystemExit(f"experiment={preset} is not a table preset (no `table:` block); tables: "
                             f"{', '.join(sorted(available_tables()))}")
        spec = OmegaConf.to_container(base.table, resolve=True)
        rows: List[Row] = []
        for rid, r in (spec.get("rows") or {}).items():
            paper = r.get("paper")
            if paper is not None and not isinstance(paper, dict):
                paper = {spec.get("paper_scale", "qwen2"): paper}
            row = Row(id=str(rid), label=str(r.get("label", rid)),
                      overrides=[str(o) for o in r.get("overrides") or []], plain=r.get("plain"),
                      paper=paper or {}, kind="adakd" if r.get("plain") else "plain")
            try:
                cfg = strip_table(compose(base_ovs + row.overrides))
                rd = run_dir_for(cfg)
            except Exception as e:   # noqa: BLE001 - e.g. a method preset that does not exist yet
                row.status, row.error = "error", f"config does not compose: {type(e).__name__}: {e}"
                rows.append(row)
                continue
            row.run_dir = str(rd)
            if is_finished(rd):
                m = json.loads((rd / "metrics.json").read_text())
                row.status, row.rouge, row.baselines = "ok", m.get("rougeL", {}), m.get("baselines", {})
            elif (rd / FAILURE_FILE).exists():
                try:
                    row.error = json.loads((rd / FAILURE_FILE).read_text()).get("error")
                except ValueError:
                    row.error = "unreadable failure.json"
                row.status = "failed"
            rows.append(row)
        # Baseline rows (teacher, SFT) come from any finished row's run.baselines (they are cached runs).
        brows = []
        for which in spec.get("baselines") or []:
            found = next((r.baselines[which] for r in rows if r.status == "ok" and which in r.baselines),
                         None)
            b = Row(id=str(which), label=ROW_LABELS.get(which, str(which)), kind="baseline")
            if found is not None:
                b.status, b.rouge, b.run_dir = "ok", found.get("rougeL", {}), found.get("dir")
            else:
                b.error = "not computed yet (run.baselines of the table's runs)"
            brows.append(b)
        rows = brows + rows
        benches = list(base.eval.benchmarks)
        for r in rows:
            benches += [b for b in r.rouge if b not in benches]
        want = [b for b in (spec.get("avg_over") or []) if b in benches]
        default_scale = spec.get("default_scale", "cpu")
        suffix = "" if not scale or scale in ("none", default_scale) else f"-{scale}"
        out_stem = Path(base.run.output_root).absolute() / "tables" / f"{table}{suffix}"
        return Table(name=table, preset=preset, scale=scale, spec=spec, rows=rows, benches=benches,
                     avg_over=want or benches, out_stem=out_stem, model=str(base.model.name),
                     seeds=list(base.eval.seeds), logger_cfg=base.logger)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def available_tables() -> List[str]:
    from importlib import resources
    names = []
    for f in (resources.files("adakd.conf") / "experiment").iterdir():
        if f.name.endswith(".yaml") and "table:" in f.read_text():
            stem = f.name[:-5]
            names.append(next((k for k, v in TABLE_PRESETS.items() if v == stem), stem))
    return names


# ------------------------------------------------------------------------------------------- statistics
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
    from scipy import stats
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


# ------------------------------------------------------------------------------------------- rendering
def _fmt(c: Cell, with_delta: bool, tex: bool = False) -> str:
    if c.mean is None:
        return "–"
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


def _header(table: Table, compare: bool) -> List[str]:
    avg = "Avg" if table.avg_over == table.benches else f"Avg ({', '.join(table.avg_over)})"
    cols = ["Method"] + list(table.benches) + [avg]
    if compare:
        cols += [f"paper Avg ({PAIRS.get(p, p)})" for p in paper_columns(table)]
    return cols


def table_rows(table: Table, cs: Dict[str, Dict[str, Cell]], compare: bool,
               tex: bool = False) -> List[List[str]]:
    rows = []
    for r in table.rows:
        line = [_tex_escape(r.label) if tex else r.label]
        line += [_fmt(cs[r.id][c], r.kind == "adakd", tex) for c in table.benches + [AVG]]
        if compare:
            line += [_paper_cell(table, r, p) for p in paper_columns(table)]
        rows.append(line)
    return rows


def problems(table: Table) -> List[str]:
    out = []
    for r in table.rows:
        if r.status == "ok":
            continue
        what = {"missing": "not run yet", "failed": "failed", "error": "cannot be built"}[r.status]
        detail = f": {r.error.strip().splitlines()[0]}" if r.error else ""
        where = f" ({r.run_dir})" if r.run_dir else ""
        out.append(f"`{r.id}` ({r.label}): {what}{detail}{where}")
    return out


def _caption(table: Table) -> str:
    seeds = ", ".join(str(s) for s in table.seeds)
    return (f"ROUGE-L, mean ± std over the generation seeds ({seeds}); scale {table.scale or 'default'} "
            f"(model {table.model}). In parentheses: the change against the row's plain partner; "
            f"{DAGGER}: significant (paired t-test over seeds, p < 0.05). Avg: mean over "
            f"{', '.join(table.avg_over)}.")


def render_markdown(table: Table, cs, compare: bool = False) -> str:
    head = _header(table, compare)
    lines = [f"## {table.spec.get('title', table.name)}", "", _caption(table), "",
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
    pairs = paper_columns(table)
    head += [f"paper_{p}_avg" for p in pairs]
    w.writerow(head)
    for r in table.rows:
        line: List[Any] = [r.id, r.label, r.plain or "", r.status, r.run_dir or ""]
        for c in cols:
            x = cs[r.id][c]
            line += [_num(x.mean), _num(x.std), x.n, _num(x.delta), _num(x.p, 4), int(x.sig)]
        line += [_num(_paper_avg(r, p)) for p in pairs]
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
    lines = [r"% generated by python -m adakd.report; needs \usepackage{booktabs}",
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


def write_outputs(table: Table, compare: bool = False, alpha: float = 0.05) -> Tuple[Dict[str, Path], bool]:
    """Write md, csv, tex and the bar chart; returns (paths, changed: the markdown differs from before)."""
    from .io import atomic_write_text
    cs = cells(table, alpha)
    stem = table.out_stem
    md = render_markdown(table, cs, compare)
    md_path, png_path = stem.with_suffix(".md"), stem.with_suffix(".png")
    changed = not (md_path.exists() and md_path.read_text(encoding="utf-8") == md)
    paths = {
        "md": atomic_write_text(md_path, md),
        "csv": atomic_write_text(stem.with_suffix(".csv"), render_csv(table, cs, compare)),
        "tex": atomic_write_text(stem.with_suffix(".tex"), render_tex(table, cs, compare)),
    }
    if not changed and png_path.exists():    # same numbers: the chart on disk is this one
        paths["png"] = png_path
        return paths, changed
    try:
        from .plots import plot_table
        png = plot_table(bar_data(table, cs), png_path,
                         title=f"{table.spec.get('title', table.name)} [{table.scale or 'default'}]")
        if png is not None:
            paths["png"] = png
    except Exception as e:   # noqa: BLE001 - the table files matter more than the chart
        log.warning("bar chart failed: %s", e)
    return paths, changed


def log_to_wandb(table: Table, paths: Dict[str, Path], compare: bool = False) -> None:
    """Mirror the table (and its chart) to W&B; local files stay the source of truth."""
    if table.logger_cfg is None:
        return
    from .tracking import make_logger
    cs = cells(table)
    tag = table.out_stem.name
    logger = make_logger(table.logger_cfg, table.out_stem.parent, run_id=f"table-{tag}", name=f"table-{tag}",
                         config={"table": table.name, "preset": table.preset, "scale": table.scale,
                                 "rows": {r.id: r.overrides for r in table.rows}}, tags=["table"])
    try:
        logger.log_table(f"tables/{table.name}", _header(table, compare), table_rows(table, cs, compare))
        if "png" in paths:
            logger.log_image(f"tables/{table.name}_avg", paths["png"])
        logger.summary({f"avg/{r.id}": cs[r.id][AVG].mean for r in table.rows
                        if cs[r.id][AVG].mean is not None})
    finally:
        logger.finish()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adakd.report", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True, help="table name: table1..table5, smoke")
    p.add_argument("--scale", default=None, help="scale option (smoke, cpu, gpt2, qwen2, openllama2); "
                                                 "omit for the config's default")
    p.add_argument("--compare", action="store_true", help="show the paper's figures beside ours")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired t-test")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    p.add_argument("--only-if-complete", action="store_true",
                   help=f"render only when every row's run has finished; else write nothing and exit "
                        f"{INCOMPLETE} (make reproduce-table uses it to skip the sweep of a finished table)")
    p.add_argument("overrides", nargs="*", help="the Hydra overrides the sweep was run with (e.g. "
                                                "run.output_root=...); hydra.* ones are ignored")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    table = collect(a.table, a.scale, a.overrides)
    if a.only_if_complete and problems(table):
        print(f"{len(problems(table))} of {len(table.rows)} rows not finished: running the sweep",
              file=sys.stderr)
        return INCOMPLETE
    if a.only_if_complete:
        print(f"all {len(table.rows)} rows finished: rendering only (no sweep)", file=sys.stderr)
    paths, changed = write_outputs(table, a.compare, a.alpha)
    print(paths["md"].read_text(), end="")
    print("written: " + ", ".join(str(v) for v in paths.values()))
    if not changed:
        print("unchanged since the last rendering: not logged to W&B again")
    elif not a.no_wandb:
        try:
            log_to_wandb(table, paths, a.compare)
        except Exception as e:   # noqa: BLE001
            log.warning("W&B logging of the table failed: %s", e)
    probs = problems(table)
    if probs:
        again = f"make reproduce-table TABLE={a.table}" + (f" SCALE={a.scale}" if a.scale else "")
        print(f"{len(probs)} row(s) missing or failed: run the sweep again ({again})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
