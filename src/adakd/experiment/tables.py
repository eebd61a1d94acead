"""A table preset's rows and their results, collected from the local result files only.

For each row of a table preset (experiments/<table>.yaml; `smoke` is experiments/smoke-table.yaml) its config
is composed exactly as the sweep's job did (preset + scale + the overrides given, which must be the sweep's
own, + the row's overrides); the row's run directory is found from that config (experiment.tasks) and its
metrics.json read. Baseline rows (teacher, SFT) come from any finished row's `baselines`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

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
    register_configs()
    if GlobalHydra.instance().is_initialized():
        return (lambda ovs: compose("config", overrides=ovs)), None
    ctx = initialize_config_module("adakd.conf", version_base="1.3")
    ctx.__enter__()
    return (lambda ovs: compose("config", overrides=ovs)), ctx


def collect(table: str, scale: Optional[str] = None, overrides: Sequence[str] = ()) -> Table:
    """Compose the table preset and each of its rows; read each row's results from its run directory."""
    preset = preset_for(table)
    extra = [o for o in overrides if not _is_hydra_override(o)]
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
            b = Row(id=str(which), label=BASELINE_LABELS.get(which, str(which)), kind="baseline")
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
    names = []
    for f in (resources.files("adakd.conf") / "experiment").iterdir():
        if f.name.endswith(".yaml") and "table:" in f.read_text():
            stem = f.name[:-5]
            names.append(next((k for k, v in TABLE_PRESETS.items() if v == stem), stem))
    return names
