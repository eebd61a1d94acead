"""Experiment presets: every preset composes at every scale, every table row composes and validates, and the
table definitions are consistent (sweep axis = rows, partners exist, shared rows share run directories)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adakd.experiment.tasks import run_dir_for
from adakd.experiment.sweep import strip_table
from adakd.experiment.config_check import validate_config

from .compose import compose_cfg

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SCALES = sorted(p.stem for p in (REPO / "conf" / "scale").glob("*.yaml"))
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
TABLES = [p for p in PRESETS if "table" in OmegaConf.load(EXPERIMENTS / f"{p}.yaml")]


def _rows(preset):
    return OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{preset}.yaml").table.rows)


TABLE_ROWS = [(t, rid) for t in TABLES for rid in _rows(t)]


def _missing_group_option(overrides):
    """The first `group=option` override whose YAML does not exist (yet), or None."""
    for o in overrides:
        key, _, value = o.partition("=")
        group = REPO / "conf" / key
        if "." not in key and group.is_dir() and not (group / f"{value}.yaml").exists():
            return o
    return None


def test_scales_and_tables_are_there():
    assert set(SCALES) >= {"smoke", "cpu", "gpt2", "qwen2", "openllama2"}
    assert set(TABLES) >= {"table1", "table2", "table3", "table4", "table5", "smoke-table"}
    assert "smoke" in PRESETS and "smoke" not in TABLES     # the single-run smoke preset stays as it was


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_at_every_scale(preset, scale):
    cfg = compose_cfg([f"experiment={preset}", f"scale={scale}"])
    assert cfg.eval.seeds and cfg.eval.benchmarks
    if preset in TABLES:
        assert cfg.table.rows and cfg.table.row is None


@pytest.mark.parametrize("preset", PRESETS)
def test_first_comment_line_says_how_to_run(preset):
    lines = (EXPERIMENTS / f"{preset}.yaml").read_text().splitlines()
    first = next(line for line in lines if line.startswith("#") and "@package" not in line)
    assert ("make reproduce-table" in first) or ("adakd-run" in first), first
    if preset in TABLES:
        assert "make reproduce-table TABLE=" in first


@pytest.mark.parametrize("table,row", TABLE_ROWS)
def test_every_table_row_composes_and_validates(table, row):
    ovs = _rows(table)[row]["overrides"]
    missing = _missing_group_option(ovs)
    if missing:   # e.g. method=gkd before its preset lands: this starts running once the file exists
        pytest.skip(f"{missing}: config file not there yet")
    cfg = strip_table(compose_cfg([f"experiment={table}", "scale=cpu", *ovs]))
    validate_config(cfg)
    assert cfg.table is None


@pytest.mark.parametrize("table", TABLES)
def test_table_definition_is_consistent(table):
    raw = OmegaConf.load(EXPERIMENTS / f"{table}.yaml")
    rows = OmegaConf.to_container(raw.table.rows)
    assert str(raw.hydra.sweeper.params["table.row"]).split(",") == list(rows), "sweep axis != rows"
    for rid, r in rows.items():
        assert r.get("label") and isinstance(r.get("overrides"), list), rid
        if r.get("plain") is not None:
            assert r["plain"] in rows and r["plain"] != rid, f"{rid}: plain partner {r['plain']!r}"
        paper = r.get("paper")
        assert paper is None or isinstance(paper, (int, float, dict)), rid


def test_paper_numbers_are_the_papers():
    t2 = _rows("table2")
    assert [t2[k]["paper"] for k in ("none", "idts", "latf", "full")] == [37.03, 38.55, 37.07, 39.01]
    t1 = _rows("table1")
    assert t1["rkl-adakd"]["paper"] == {"qwen2": 32.97, "openllama2": 29.27}
    assert _rows("table5")["logit-std"]["paper"] == 34.76


def _run_dir(table, row, scale="cpu"):
    return run_dir_for(strip_table(compose_cfg([f"experiment={table}", f"scale={scale}",
                                                *_rows(table)[row]["overrides"]])))


def test_the_same_row_in_several_tables_is_one_run():
    """AdaKD with everything at its default is table 2's `full`, table 3's `hellinger`, table 4's `latf`,
    table 5's `idts`: one run directory, computed once, whatever the table's labels or paper numbers."""
    dirs = {_run_dir("table2", "full"), _run_dir("table3", "hellinger"), _run_dir("table4", "latf"),
            _run_dir("table5", "idts")}
    assert len(dirs) == 1
    assert _run_dir("table2", "none") == _run_dir("table3", "plain")
    assert _run_dir("table2", "idts") == _run_dir("table4", "fixed-1.0")
    assert _run_dir("table2", "latf") == _run_dir("table5", "t-1")
    assert _run_dir("table2", "full") != _run_dir("table2", "none")


def test_scale_cpu_is_the_builtin_default_and_smoke_is_experiment_smoke():
    assert run_dir_for(compose_cfg([])) == run_dir_for(compose_cfg(["scale=cpu"]))
    assert run_dir_for(compose_cfg(["experiment=smoke"])) == run_dir_for(compose_cfg(["scale=smoke"]))


def test_paper_scales_use_hub_ids_and_lora():
    q = compose_cfg(["scale=qwen2"])
    assert q.model.teacher.path == "Qwen/Qwen2-7B" and q.model.student.path == "Qwen/Qwen2-1.5B"
    assert q.model.student.lora == {"r": 16, "alpha": 32, "dropout": 0.05}
    g = compose_cfg(["scale=gpt2"])
    assert g.model.teacher.path == "gpt2-xl" and g.model.teacher.finetune.lr == 5e-5
    assert g.train.global_batch == 128 and list(g.eval.benchmarks)[0] == "dolly"
    o = compose_cfg(["scale=openllama2"])
    assert o.model.student.lora.r == 16 and "open_llama_3b" in o.model.student.path


def test_slurm_launcher_config_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module
    with initialize_config_module("adakd.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "experiment=table2"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


@pytest.mark.integration
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    """Two jobs that fail (unknown rows): both are tried, both recorded, the summary lists them, exit 1."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "adakd", "-m", "experiment=smoke-table", "table.row=bogus-a,bogus-b",
         f"run.output_root={tmp_path}", "logger=none"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed" in out and "bogus-a" in out and "bogus-b" in out, out
    summary = json.loads(next(tmp_path.glob("hydra/multirun/*/sweep_summary.json")).read_text())
    assert summary["jobs"] == 2 and summary["failed"] == 2
    assert all("not a row of this table" in j["error"] for j in summary["results"])


@pytest.mark.slow
@pytest.mark.integration
def test_make_reproduce_table_smoke_then_rerun_only_renders(tmp_path):
    """The acceptance path: `make reproduce-table TABLE=smoke` in a fresh output root, then again."""
    import time
    for m in ("fkl", "rkl"):
        if not (REPO / "conf" / "method" / f"{m}.yaml").exists():
            pytest.skip(f"conf/method/{m}.yaml not there yet")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = ["make", "-s", "reproduce-table", "TABLE=smoke",
           f"ARGS=run.output_root={tmp_path} logger=none train.threads=1 run.progress=false"]
    t0 = time.time()
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900,
                           check=False)
    t_first = time.time() - t0
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    md = (tmp_path / "tables" / "smoke.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| Method")]
    assert [r.split("|")[1].strip() for r in rows] == ["FKD", "FKD + AdaKD", "RKD", "RKD + AdaKD"]
    assert "| Method | synthetic | Avg |" in md
    for ext in ("csv", "tex", "png"):
        assert (tmp_path / "tables" / f"smoke.{ext}").exists()
    t0 = time.time()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
                           check=False)
    t_again = time.time() - t0
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "rendering only (no sweep)" in again.stderr     # every row finished: no sweep at all
    # Timings (acceptance: < 5 min, then < 30 s on an idle 2-core machine) are printed, not asserted:
    # on a shared machine they measure the neighbours.
    print(f"first: {t_first:.0f} s, again: {t_again:.0f} s")
