"""Results -> tables. A run's own table (its row and its baseline rows) is printed at the end of a run;
sweep tables of the paper's shape are built from the local result files only.

    adakd-report --table table2 --scale cpu [--compare] [override ...]

renders a table preset (experiments/<table>.yaml; `--table smoke` is experiments/smoke-table.yaml): for each
row it composes the row's config exactly as the sweep's job did (preset + scale + the overrides given, which
must be the sweep's own, + the row's overrides), finds the run directory with experiment.tasks.run_dir_for
and reads its metrics.json. Cells: mean ± std (ddof=1) over the generation seeds, and for a row with a
`plain` partner the change against it, marked † where a paired t-test over the seeds gives p < 0.05. With
training seeds (`--train-seeds 10,20,30`, or the sweep's `train.seed=10,20,30` among the overrides) each row is
one run per seed and the statistics are over training seeds (experiment.table_stats).
Writes <output_root>/tables/<table>[-<scale>].{md,csv,tex,png} (the scale suffix unless it is the table's
default scale: smoke for the smoke table, cpu otherwise), prints the markdown, logs the table and the bar
chart to W&B (offline by default; not again when the table is unchanged) and exits 1 when a row's run is
missing or failed (listed under the table).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io import atomic_write_text, read_jsonl_prefix
from ..tracking import make_logger
from .plots import plot_dev_curves, plot_table
from .table_render import _header, bar_data, problems, render_csv, render_markdown, render_tex, table_rows
from .table_stats import AVG, cells
from .table_summary import render_summary
from .tables import Table, collect

log = logging.getLogger(__name__)

INCOMPLETE = 3          # exit status of --only-if-complete when some row has not finished


def write_outputs(table: Table, compare: bool = False, alpha: float = 0.05) -> Tuple[Dict[str, Path], bool]:
    """Write md, csv, tex and the bar chart; returns (paths, changed: the markdown differs from before)."""
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
    dev_path = stem.parent / f"{stem.name}-dev.png"
    if not changed and png_path.exists():    # same numbers: the charts on disk are these
        paths["png"] = png_path
        if dev_path.exists():
            paths["dev_png"] = dev_path
        return paths, changed
    title = f"{table.spec.get('title', table.name)} [{table.scale or 'default'}]"
    try:
        png = plot_table(bar_data(table, cs), png_path, title=title)
        if png is not None:
            paths["png"] = png
        dev = plot_dev_curves(dev_curves(table), dev_path, title=f"{title}: validation on the dev split")
        if dev is not None:
            paths["dev_png"] = dev
    except Exception as e:   # noqa: BLE001 - the table files matter more than the charts
        log.warning("table chart failed: %s", e)
    return paths, changed


def dev_curves(table: Table) -> List[Dict[str, Any]]:
    """The dev validation rows of each finished row's run (train_log.jsonl), for the table's dev figure."""
    out = []
    for r in table.rows:
        if r.status == "ok" and r.run_dir:
            rows = [x for x in read_jsonl_prefix(Path(r.run_dir) / "train_log.jsonl") if x.get("split") == "dev"]
            if rows:
                out.append({"label": r.label, "rows": rows})
    return out


def log_to_wandb(table: Table, paths: Dict[str, Path], compare: bool = False) -> None:
    """Mirror the table (and its chart) to W&B; local files stay the source of truth."""
    if table.logger_cfg is None:
        return
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
    p = argparse.ArgumentParser(prog="adakd-report", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default=None, help="table name: table1..table5, smoke")
    p.add_argument("--summary", default=None, metavar="TABLES",
                   help="comma-separated tables: one screen of how many of the paper's comparisons have the paper's "
                        "sign here (instead of rendering one table)")
    p.add_argument("--scale", default=None, help="scale option (smoke, cpu, gpt2, qwen2, openllama2); "
                                                 "omit for the config's default")
    p.add_argument("--compare", action="store_true", help="show the paper's figures beside ours")
    p.add_argument("--train-seeds", default=None,
                   help="comma-separated training seeds: one run per row and seed (as `train.seed=10,20,30` in the "
                        "sweep); cells are mean ± std over training seeds (default: the table's train_seeds)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired t-test")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    p.add_argument("--only-if-complete", action="store_true",
                   help=f"render only when every row's run has finished; else write nothing and exit "
                        f"{INCOMPLETE} (make reproduce-table uses it to skip the sweep of a finished table)")
    p.add_argument("overrides", nargs="*", help="the Hydra overrides the sweep was run with (e.g. "
                                                "run.output_root=...); hydra.* ones are ignored")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    train_seeds = [int(x) for x in a.train_seeds.split(",")] if a.train_seeds else None
    if a.summary:
        tables = [collect(t, a.scale, a.overrides, train_seeds=train_seeds) for t in a.summary.split(",")]
        print(render_summary(tables, a.alpha), end="")
        return 1 if any(problems(t) for t in tables) else 0
    if not a.table:
        p.error("give --table (or --summary)")
    table = collect(a.table, a.scale, a.overrides, train_seeds=train_seeds)
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
