"""A table preset's rows and their results, collected from the local result files only.

For each row of a table preset (experiments/<table>.yaml; `smoke` is experiments/smoke-table.yaml) its config
is composed exactly as the sweep's job did (preset + scale + the overrides given, which must be the sweep's
own, + the row's overrides); the row's run directory is found from that config (experiment.tasks) and its
metrics.json read. Baseline rows (teacher, SFT) come from any finished row's `baselines`.

With training seeds (the table's `train_seeds`, or a `train.seed=10,20,30` override as the sweep was given it)
each row is one run per training seed (`train.seed=<s>` added to its overrides), kept in `Row.runs`; the SFT
baseline is then one run per training seed too, the teacher one run (it does not train).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from ..assemble.identity import output_root
from ..errors import ConfigError
from .config_store import register_configs
from .tasks import BASELINE_LABELS, is_finished, run_dir_for

TABLE_PRESETS = {"smoke": "smoke-table"}      # --table name -> experiment preset, where they differ
FAILURE_FILE = "failure.json"                  # a failed sweep job's error, in its run directory
ROW_KEY = "table.row"                          # the key a table sweep varies


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`; `~a` -> `a`; `hydra/launcher=x` -> `hydra/launcher`."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def row_overrides(table: Any, row: str) -> List[str]:
    rows = table.get("rows") or {}
    if row not in rows:
        raise ConfigError(f"table.row={row!r} is not a row of this table; rows: {list(rows)}")
    return [str(o) for o in (rows[row].get("overrides") or [])]


def strip_table(cfg: DictConfig) -> DictConfig:
    """The run's config: the table definition removed (it is not part of what a run computes)."""
    if cfg.get("table") is not None:
        with open_dict(cfg):
            cfg.table = None
    return cfg


@dataclass
class Row:
    id: str
    label: str
    overrides: List[str] = field(default_factory=list)
    plain: Optional[str] = None            # id of the row this one is compared against
    paper: Dict[str, Any] = field(default_factory=dict)   # pair -> avg (number) or {benchmark|avg: number}
    kind: str = "plain"                     # plain | adakd (has a partner) | baseline (teacher, SFT)
    run_dir: Optional[str] = None
    status: str = "missing"                 # ok | missing | unfinished | failed | error (config does not compose)
    error: Optional[str] = None
    rouge: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    baselines: Dict[str, Any] = field(default_factory=dict)
    # with training seeds: {train.seed: {"dir", "rouge", "baselines"}} of the finished runs
    runs: Dict[int, Dict[str, Any]] = field(default_factory=dict)


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
    train_seeds: List[int] = field(default_factory=list)   # empty: one run per row (the paper's protocol)


def preset_for(table: str) -> str:
    return TABLE_PRESETS.get(table, table)


def _is_hydra_override(o: str) -> bool:
    key = o.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.startswith("-")


def _composer():
    """A compose(overrides) function on the package's configs (standalone or inside a Hydra app)."""
    register_configs()
    if GlobalHydra.instance().is_initialized():
        return (lambda ovs: compose("config", overrides=ovs)), None
    ctx = initialize_config_module("adakd.conf", version_base="1.3")
    ctx.__enter__()
    return (lambda ovs: compose("config", overrides=ovs)), ctx


def split_sweep_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[int], List[str]]:
    """The sweep's own axes among the overrides the sweep was given: (the other overrides, the training seeds
    of a `train.seed=a,b,c`, the rows of a `table.row=a,b` that swept only some rows)."""
    rest, seeds, rows = [], [], []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "train.seed" and "," in value:
            try:
                seeds = [int(v) for v in value.split(",")]
            except ValueError:
                raise ConfigError(f"{o}: training seeds must be integers") from None
        elif key == ROW_KEY:
            rows = [v for v in value.split(",") if v]
        else:
            rest.append(o)
    return rest, seeds, rows


def _read_run(row: Row, rd: Path) -> Optional[Dict[str, Any]]:
    """A finished run's results; else None, with the row's status set to failed where the run failed."""
    if is_finished(rd):
        m = json.loads((rd / "metrics.json").read_text())
        return {"dir": str(rd), "rouge": m.get("rougeL", {}), "baselines": m.get("baselines", {})}
    if (rd / FAILURE_FILE).exists():
        try:
            row.error = json.loads((rd / FAILURE_FILE).read_text()).get("error")
        except (ValueError, AttributeError):
            row.error = "unreadable failure.json"
        row.status = "failed"
    elif (rd / "metrics.json").exists():   # there, but not a finished result: corrupt, or not adakd's
        row.status, row.error, row.run_dir = "failed", "metrics.json is corrupt or not a finished result", str(rd)
    elif rd.is_dir():   # started (config.yaml, checkpoints), never finished: killed, or running now
        row.status, row.run_dir = "unfinished", str(rd)
    return None


def _baseline_row(which: str, rows: List[Row], train_seeds: Sequence[int]) -> Row:
    """A baseline row (teacher, SFT) from the finished rows' run.baselines (they are cached runs)."""
    b = Row(id=str(which), label=BASELINE_LABELS.get(which, str(which)), kind="baseline")
    if train_seeds:
        for s in train_seeds:
            found = next((r.runs[s]["baselines"][which] for r in rows if s in r.runs
                          and which in r.runs[s]["baselines"]), None)
            if found is not None:
                b.runs[s] = {"dir": found.get("dir"), "rouge": found.get("rougeL", {})}
        if len(b.runs) == len(train_seeds):
            first = b.runs[train_seeds[0]]
            b.status, b.rouge, b.run_dir = "ok", first["rouge"], first["dir"]
        else:
            b.error = f"{len(b.runs)} of {len(train_seeds)} training seeds computed (run.baselines of the table's runs)"
        return b
    found = next((r.baselines[which] for r in rows if r.status == "ok" and which in r.baselines), None)
    if found is not None:
        b.status, b.rouge, b.run_dir = "ok", found.get("rougeL", {}), found.get("dir")
    else:
        b.error = "not computed yet (run.baselines of the table's runs)"
    return b


def collect(table: str, scale: Optional[str] = None, overrides: Sequence[str] = (),
            train_seeds: Optional[Sequence[int]] = None) -> Table:
    """Compose the table preset and each of its rows; read each row's results from its run directory (one
    per training seed where there are training seeds: the argument, a train.seed=a,b,c override, or the
    table's `train_seeds`)."""
    preset = preset_for(table)
    extra, swept, only = split_sweep_overrides([o for o in overrides if not _is_hydra_override(o)])
    base_ovs = [f"experiment={preset}"] + ([f"scale={scale}"] if scale and scale != "none" else []) + extra
    compose, ctx = _composer()
    try:
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
        seeds = [int(x) for x in (train_seeds or swept or spec.get("train_seeds") or [])]
        rows: List[Row] = []
        unknown = [r for r in only if r not in (spec.get("rows") or {})]
        if unknown:
            raise ConfigError(f"table.row: {unknown} not rows of {table}; rows: {list(spec.get('rows') or {})}")
        for rid, r in (spec.get("rows") or {}).items():
            if only and rid not in only:   # the sweep ran some rows only: the table is those
                continue
            paper = r.get("paper")
            if paper is not None and not isinstance(paper, dict):
                paper = {spec.get("paper_scale", "qwen2"): paper}
            row = Row(id=str(rid), label=str(r.get("label", rid)),
                      overrides=[str(o) for o in r.get("overrides") or []], plain=r.get("plain"),
                      paper=paper or {}, kind="adakd" if r.get("plain") else "plain")
            for s in seeds or [None]:
                try:
                    cfg = strip_table(compose(base_ovs + row.overrides + ([] if s is None else [f"train.seed={s}"])))
                    rd = run_dir_for(cfg)
                except Exception as e:   # noqa: BLE001 - e.g. a method preset that does not exist yet
                    row.status, row.error = "error", f"config does not compose: {type(e).__name__}: {e}"
                    break
                row.run_dir = row.run_dir or str(rd)
                run = _read_run(row, rd)
                if run is not None and s is not None:
                    row.runs[s] = run
                elif run is not None:
                    row.status, row.rouge, row.baselines = "ok", run["rouge"], run["baselines"]
            if seeds and row.status in ("missing", "unfinished"):
                if len(row.runs) == len(seeds):
                    first = row.runs[seeds[0]]
                    row.status, row.rouge, row.baselines = "ok", first["rouge"], first["baselines"]
                else:
                    row.error = f"{len(row.runs)} of {len(seeds)} training seeds finished"
            rows.append(row)
        rows = [_baseline_row(w, rows, seeds) for w in spec.get("baselines") or []] + rows
        benches = list(base.eval.benchmarks)
        for r in rows:
            benches += [b for b in r.rouge if b not in benches]
        want = [b for b in (spec.get("avg_over") or []) if b in benches]
        default_scale = spec.get("default_scale", "cpu")
        suffix = "" if not scale or scale in ("none", default_scale) else f"-{scale}"
        out_stem = output_root(base.run) / "tables" / f"{table}{suffix}"
        return Table(name=table, preset=preset, scale=scale, spec=spec, rows=rows, benches=benches,
                     avg_over=want or benches, out_stem=out_stem, model=str(base.model.name),
                     seeds=list(base.eval.seeds), logger_cfg=base.logger, train_seeds=seeds)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def available_tables() -> List[str]:
    names = []
    for f in (resources.files("adakd.conf") / "experiment").iterdir():
        if f.name.endswith(".yaml") and "table:" in f.read_text():
            stem = f.name[:-5]
            names.append(next((k for k, v in TABLE_PRESETS.items() if v == stem), stem))
    return names
