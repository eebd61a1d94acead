"""The table renderer on hand-made run directories: cells, deltas, significance, missing rows, files."""
from __future__ import annotations

from pathlib import Path

import pytest

from adakd.experiment import report, table_render, tables
from adakd.io import atomic_write_json
from adakd.experiment.table_stats import AVG, Cell, cells, paired_p, seed_scores
from adakd.experiment.tables import Row, Table
from adakd.experiment.table_render import render_markdown, render_tex
from adakd.experiment.tasks import run_dir_for
from adakd.experiment.sweep import strip_table

from .compose import compose_cfg

BASE = [10.0, 11.0, 9.0, 10.5, 9.5]


def _metrics(per_seed, bench="synthetic"):
    m = sum(per_seed) / len(per_seed)
    sd = (sum((x - m) ** 2 for x in per_seed) / (len(per_seed) - 1)) ** 0.5
    return {"status": "ok", "rougeL": {bench: {"mean": m, "std": sd, "per_seed": per_seed, "n": 24}},
            "avg": m}


def _row_dir(root: Path, row: str, table="table2", scale="smoke") -> Path:
    from omegaconf import OmegaConf
    rows = OmegaConf.load(Path(__file__).resolve().parents[1] / "experiments" / f"{table}.yaml").table.rows
    cfg = compose_cfg([f"experiment={table}", f"scale={scale}", f"run.output_root={root}",
                       *rows[row].overrides])
    return run_dir_for(strip_table(cfg))


@pytest.fixture
def table2_runs(tmp_path):
    """table2 at scale smoke: `none` the base, `idts` a clear gain on every seed, `full` a noisy zero change,
    `latf` failed (failure.json)."""
    atomic_write_json(_row_dir(tmp_path, "none") / "metrics.json", _metrics(BASE))
    atomic_write_json(_row_dir(tmp_path, "idts") / "metrics.json",
                      _metrics([x + 2.0 + d for x, d in zip(BASE, [0.1, -0.1, 0.05, 0.0, -0.05])]))
    atomic_write_json(_row_dir(tmp_path, "full") / "metrics.json",
                      _metrics([x + d for x, d in zip(BASE, [1.0, -1.2, 0.8, -0.9, 0.4])]))
    atomic_write_json(_row_dir(tmp_path, "latf") / "failure.json",
                      {"status": "failed", "error": "RuntimeError: boom"})
    return tmp_path


def test_renderer_end_to_end_on_hand_made_runs(table2_runs, capsys):
    rc = report.main(["--table", "table2", "--scale", "smoke", "--no-wandb", "--compare",
                      f"run.output_root={table2_runs}"])
    assert rc == 1                                   # latf failed: the table is incomplete
    out_dir = table2_runs / "tables"
    for ext in ("md", "csv", "tex", "png"):          # the scale is not the default (cpu): suffixed
        assert (out_dir / f"table2-smoke.{ext}").stat().st_size > 0
    md = (out_dir / "table2-smoke.md").read_text()
    assert md == capsys.readouterr().out.split("written:")[0]
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert ("| Method | synthetic | Avg | paper Avg (Qwen2-7B→1.5B) | same sign as paper (Qwen2-7B→1.5B) |"
            in md)
    assert lines["RKD"].count("10.00 ± 0.79") == 2 and "(" not in lines["RKD"].split("|")[2]
    assert "12.00 ± 0.75 (+2.00†)" in lines["+ IDTS only"]           # significant gain, marked
    full = lines["+ AdaKD (LATF + IDTS)"]
    assert "(+0.02)" in full and "†" not in full                    # noise: no marker
    assert "38.55 (+1.52)" in lines["+ IDTS only"]                   # the paper's number and change
    assert lines["+ IDTS only"].endswith("| yes† |")                 # +2.00† here, +1.52 in the paper
    assert full.endswith("| yes |") and lines["RKD"].endswith("| – |")
    assert "–" in lines["+ LATF only"]
    assert "`latf` (+ LATF only): failed: RuntimeError: boom" in md
    csv = (out_dir / "table2-smoke.csv").read_text().splitlines()
    assert csv[0].startswith("row,label,plain,status,run_dir,synthetic_mean")
    idts = next(c for c in csv if c.startswith("idts,"))
    assert ",ok," in idts and ",1," in idts
    tex = (out_dir / "table2-smoke.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"$^\dagger$" in tex and "†" not in tex


def test_missing_runs_are_listed_and_exit_nonzero(tmp_path, capsys):
    rc = report.main(["--table", "table2", "--scale", "smoke", "--no-wandb", f"run.output_root={tmp_path}"])
    assert rc == 1
    md = (tmp_path / "tables" / "table2-smoke.md").read_text()
    assert md.count("not run yet") == 4
    assert "missing or failed" in capsys.readouterr().err


def test_complete_table_exits_zero_and_default_scale_has_no_suffix(tmp_path):
    for i, row in enumerate(["none", "idts", "latf", "full"]):
        atomic_write_json(_row_dir(tmp_path, row, scale="cpu") / "metrics.json",
                          _metrics([x + i for x in BASE]))
    rc = report.main(["--table", "table2", "--scale", "cpu", "--no-wandb", f"run.output_root={tmp_path}"])
    assert rc == 0
    assert (tmp_path / "tables" / "table2.md").exists()


def _table(rows, benches=("a", "b"), avg_over=None):
    return Table(name="t", preset="t", scale="cpu", spec={"title": "T"}, rows=rows, benches=list(benches),
                 avg_over=list(avg_over or benches), out_stem=Path("/nonexistent/t"), model="m",
                 seeds=[1, 2, 3])


def test_avg_is_per_seed_over_the_chosen_benchmarks():
    r = Row(id="x", label="x", status="ok", rouge={"a": {"mean": 2, "per_seed": [1, 2, 3]},
                                                   "b": {"mean": 20, "per_seed": [10, 20, 30]},
                                                   "c": {"mean": 99, "per_seed": [99, 99, 99]}})
    assert seed_scores(r, AVG, ["a", "b"]) == [5.5, 11.0, 16.5]
    assert seed_scores(r, "c", []) == [99.0, 99.0, 99.0]
    assert seed_scores(Row(id="y", label="y"), AVG, ["a"]) is None


def test_paired_t_test():
    from scipy import stats
    a, b = [1.0, 2.0, 3.5, 4.0], [0.5, 2.2, 2.0, 3.1]
    assert paired_p(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_p([1, 2, 3], [1, 2, 3]) == 1.0      # no change at all
    assert paired_p([2, 3, 4], [1, 2, 3]) == 0.0      # a constant shift on every seed
    assert paired_p([1.0], [2.0]) is None             # one seed: no test
    assert paired_p([1, 2], [1, 2, 3]) is None


def test_single_seed_cells_have_no_std_and_no_marker():
    base = Row(id="p", label="P", status="ok", rouge={"a": {"mean": 10.0, "per_seed": [10.0]}})
    ada = Row(id="q", label="Q", plain="p", kind="adakd", status="ok",
              rouge={"a": {"mean": 12.0, "per_seed": [12.0]}})
    t = _table([base, ada], benches=["a"])
    cs = cells(t)
    assert cs["q"][AVG] == Cell(mean=12.0, std=0.0, n=1, delta=2.0, p=None, sig=False)
    md = render_markdown(t, cs)
    q_line = next(ln for ln in md.splitlines() if ln.startswith("| Q |"))
    assert q_line == "| Q | 12.00 (+2.00) | 12.00 (+2.00) |"
    assert r"Q & 12.00 (+2.00)" in render_tex(t, cs)


def test_available_tables_and_unknown_table():
    names = tables.available_tables()
    assert {"table1", "table2", "table3", "table4", "table5", "smoke"} <= set(names)
    with pytest.raises(SystemExit, match="unknown table 'nope'; tables: smoke, table1"):
        tables.collect("nope", "cpu")


def test_results_table_still_works():
    m = _metrics([1.0, 2.0])
    m["baselines"] = {"teacher": {"label": "teacher", "rougeL": _metrics([5.0, 6.0])["rougeL"], "avg": 5.5}}
    out = table_render.results_table(m, label="student rkl")
    assert "| teacher | 5.50 ± 0.71 | 5.50 |" in out and "| student rkl | 1.50 ± 0.71 | 1.50 |" in out
    assert out.startswith("ROUGE-L (mean ± std over seeds)")
    m["protocol"] = {"seeds": [10, 20]}
    assert table_render.results_table(m).startswith("ROUGE-L (mean ± std over 2 generation seeds: 10, 20)")


def test_baseline_rows_come_from_the_runs(tmp_path):
    """table1's teacher / SFT rows: read from run.baselines recorded in any finished row's metrics."""
    rd = _row_dir(tmp_path, "rkl", table="table1")
    m = _metrics(BASE)
    teacher = _metrics([30.0, 31.0, 29.0, 30.0, 30.0])["rougeL"]
    m["baselines"] = {"teacher": {"label": "teacher", "rougeL": teacher,
                                  "avg": 30.0, "dir": "x"}}
    atomic_write_json(rd / "metrics.json", m)
    t = tables.collect("table1", "smoke", [f"run.output_root={tmp_path}"])
    by = {r.id: r for r in t.rows}
    assert [r.id for r in t.rows[:2]] == ["teacher", "sft"]
    assert by["teacher"].status == "ok" and by["sft"].status == "missing"
    assert by["rkl"].status == "ok"
    md = render_markdown(t, cells(t))
    assert "| teacher | 30.00 ± 0.71 |" in md


def _row_dir_seed(root: Path, row: str, seed: int, table="table2", scale="smoke") -> Path:
    from omegaconf import OmegaConf
    rows = OmegaConf.load(Path(__file__).resolve().parents[1] / "experiments" / f"{table}.yaml").table.rows
    cfg = compose_cfg([f"experiment={table}", f"scale={scale}", f"run.output_root={root}",
                       *rows[row].overrides, f"train.seed={seed}"])
    return run_dir_for(strip_table(cfg))


def test_training_seed_statistics(tmp_path, capsys):
    """One run per training seed: cells are mean ± std over the training seeds of each run's mean over the
    generation seeds, paired by training seed against the plain row; the generation-seed spread apart."""
    seeds = [10, 20, 30]
    none_means = {10: 10.0, 20: 12.0, 30: 11.0}
    shifts = {10: 1.0, 20: 1.1, 30: 0.9}         # idts: a steady gain on every training seed
    gen = [-0.5, 0.5, 0.0]                        # generation-seed deviations within a run (sd 0.5)
    for s in seeds:
        atomic_write_json(_row_dir_seed(tmp_path, "none", s) / "metrics.json",
                          _metrics([none_means[s] + d for d in gen]))
        atomic_write_json(_row_dir_seed(tmp_path, "idts", s) / "metrics.json",
                          _metrics([none_means[s] + shifts[s] + d for d in gen]))
    atomic_write_json(_row_dir_seed(tmp_path, "full", 10) / "metrics.json", _metrics(BASE))   # 1 of 3 seeds
    t = tables.collect("table2", "smoke", [f"run.output_root={tmp_path}", "train.seed=10,20,30"])
    assert t.train_seeds == seeds
    by = {r.id: r for r in t.rows}
    assert by["none"].status == "ok" and sorted(by["none"].runs) == seeds
    assert by["full"].status == "missing" and "1 of 3 training seeds" in by["full"].error
    cs = cells(t)
    c = cs["idts"][AVG]
    assert c.n == 3 and c.mean == pytest.approx(12.0) and c.std == pytest.approx(1.11 ** 0.5)
    assert c.delta == pytest.approx(1.0) and c.sig                   # paired by training seed
    assert c.gen_std == pytest.approx(0.5)
    assert paired_p([11.0, 13.1, 11.9], [10.0, 12.0, 11.0]) == pytest.approx(c.p)
    md = render_markdown(t, cs)
    assert "mean ± std over the training seeds (10, 20, 30)" in md and "generation-seed sd" in md
    idts_line = next(ln for ln in md.splitlines() if ln.startswith("| + IDTS only"))
    assert "12.00 ± 1.05 (+1.00†)" in idts_line and idts_line.rstrip(" |").endswith("0.50")
    # the same through the command line, with the seeds given as an option
    rc = report.main(["--table", "table2", "--scale", "smoke", "--no-wandb", "--train-seeds", "10,20,30",
                      f"run.output_root={tmp_path}"])
    assert rc == 1 and "12.00 ± 1.05 (+1.00†)" in capsys.readouterr().out


def test_a_teacher_row_is_one_run_for_every_training_seed():
    teacher = {"dir": "t", "rouge": _metrics([30.0, 31.0, 29.0])["rougeL"]}
    row = Row(id="teacher", label="teacher", kind="baseline", status="ok", runs={10: teacher, 20: teacher})
    t = _table([row], benches=("synthetic",))
    t.train_seeds = [10, 20]
    c = cells(t)["teacher"][AVG]
    assert (c.n, c.mean, c.std, c.gen_std) == (1, 30.0, 0.0, pytest.approx(1.0))


def test_the_sweeps_own_axes_are_read_from_its_overrides(tmp_path):
    """`train.seed=a,b` and `table.row=a,b` as the sweep was given them: seeds and the rows it ran."""
    rest, seeds, rows = tables.split_sweep_overrides(["train.seed=10,20", "table.row=none,idts", "eval.seeds=[1]"])
    assert (rest, seeds, rows) == (["eval.seeds=[1]"], [10, 20], ["none", "idts"])
    t = tables.collect("table2", "smoke", [f"run.output_root={tmp_path}", "table.row=none,idts"])
    assert [r.id for r in t.rows] == ["none", "idts"]
    with pytest.raises(tables.ConfigError, match="not rows of table2"):
        tables.collect("table2", "smoke", [f"run.output_root={tmp_path}", "table.row=nope"])


def test_corrupt_unfinished_and_nan_runs_are_named_not_called_not_run_yet(tmp_path, capsys):
    """issue 23: a run started but never finished, a metrics.json that is valid JSON but not an object, and a
    NaN cell: each is named in the problems, the NaN flagged in its cell; nothing crashes."""
    atomic_write_json(_row_dir(tmp_path, "none") / "metrics.json", [])
    (_row_dir(tmp_path, "idts") / "checkpoints").mkdir(parents=True)
    nan = _metrics([float("nan")] + BASE[1:])
    atomic_write_json(_row_dir(tmp_path, "full") / "metrics.json", nan)
    rc = report.main(["--table", "table2", "--scale", "smoke", "--no-wandb", f"run.output_root={tmp_path}"])
    assert rc == 1
    md = (tmp_path / "tables" / "table2-smoke.md").read_text()
    assert "failed: metrics.json is corrupt or not a finished result" in md
    assert "started but not finished" in md and md.count("not run yet") == 1   # latf alone
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "NaN!" in lines["+ AdaKD (LATF + IDTS)"]
    assert "`full` (+ AdaKD (LATF + IDTS)): not a number in synthetic" in md


def test_sign_agreement_and_the_cross_table_summary():
    from adakd.experiment.table_summary import render_summary
    base = Row(id="p", label="P", status="ok", paper={"qwen2": 30.0},
               rouge={"a": {"mean": 10.0, "per_seed": [10.0, 10.2, 9.8]}})
    up = Row(id="u", label="U", plain="p", kind="adakd", status="ok", paper={"qwen2": 31.0},
             rouge={"a": {"mean": 12.0, "per_seed": [12.0, 12.1, 11.9]}})       # same sign as the paper
    down = Row(id="d", label="D", plain="p", kind="adakd", status="ok", paper={"qwen2": 31.5},
               rouge={"a": {"mean": 9.0, "per_seed": [9.5, 8.0, 9.5]}})          # opposite sign
    t = _table([base, up, down], benches=["a"])
    cs = cells(t)
    assert table_render.sign_agreement(t, up, cs, "qwen2") == (True, cs["u"][AVG].sig)
    assert table_render.sign_agreement(t, down, cs, "qwen2")[0] is False
    assert table_render.sign_agreement(t, base, cs, "qwen2") is None            # the reference row itself
    text = render_summary([t])
    assert "| t | 2 | 1 |" in text and "| all | 2 | 1 |" in text
    assert "- t: D vs P: -1.00 vs +1.50" in text
