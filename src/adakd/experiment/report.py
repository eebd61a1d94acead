"""Results -> tables. A run's own table (its row and its baseline rows) is printed at the end of a run;
sweep tables of the paper's shape are built from the local result files only.

    adakd-report --table table2 --scale cpu [--compare] [override ...]

renders a table preset (experiments/<table>.yaml; `--table smoke` is experiments/smoke-table.yaml): for each
row it composes the row's config exactly as the sweep's job did (preset + scale + the overrides given, which
must be the sweep's own, + the row's overrides), finds the run directory with experiment.tasks.run_dir_for
and reads its metrics.json. Cells: mean ± std (ddof=1) over the generation seeds, and for a row with a
`plain` partner the change against it, marked † where a paired t-test over the seeds gives p < 0.05.
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
from typing import Dict, Optional, Sequence, Tuple

from ..io import atomic_write_text
from ..tracking import make_logger
from .plots import plot_table
from .table_render import _header, bar_data, problems, render_csv, render_markdown, render_tex, table_rows
from .table_stats import AVG, cells
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
    if not changed and png_path.exists():    # same numbers: the chart on disk is this one
        paths["png"] = png_path
        return paths, changed
    try:
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
