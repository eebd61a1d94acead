"""plot_run on a hand-made run directory writes readable PNGs; missing data only means fewer plots."""
from __future__ import annotations

import json
import math
import random

import pytest

from adakd.experiment.plots import (difficulty_spread, hard_easy_tau, mid_training_rows, plot_difficulty_mid,
                                   plot_run, plot_table)

PNG = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_run(run_dir, steps=60, every=10):
    rng = random.Random(0)
    train = []
    ratio = 1.0
    for s in range(1, steps + 1):
        if s > 10:
            ratio = max(0.75, ratio * 0.99)
        train.append({"step": s, "loss": 2.0 * math.exp(-s / 30) + rng.random() * 0.1,
                      "lr": 1e-3 * (1 - s / steps),
                      "ratio": ratio, "kept_frac": ratio, "kd_loss": 1.5 * math.exp(-s / 30),
                      "diff_kept_mean": 0.5, "diff_dropped_mean": 0.2 if ratio < 1 else 0.0, "tau_mean": 1.0})
    tele = []
    for s in range(1, steps + 1, every):
        n = 50
        diff = [rng.random() for _ in range(n)]
        k = int(n * (1.0 if s <= 10 else 0.8))
        keep = set(sorted(range(n), key=lambda i: -diff[i])[:k])
        kept = [i in keep for i in range(n)]
        dk = [d for d, kk in zip(diff, kept) if kk]
        med = sorted(dk)[(len(dk) - 1) // 2]
        tau = [math.exp(-0.5 * math.tanh(math.log(d / med))) for d in dk]
        tele.append({"step": s, "tau": tau, "difficulty": diff, "kept": kept})
    _write_jsonl(run_dir / "train_log.jsonl", train)
    _write_jsonl(run_dir / "telemetry.jsonl", tele)


def test_plot_run_writes_the_four_plots(tmp_path):
    _fake_run(tmp_path)
    made = plot_run(tmp_path)
    assert set(made) == {"training", "latf_ratio", "tau_hist", "difficulty"}
    for p in made.values():
        assert p.parent == tmp_path / "plots"
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000


def test_plot_run_without_files_or_keys(tmp_path):
    assert plot_run(tmp_path) == {}
    _write_jsonl(tmp_path / "train_log.jsonl",
                 [{"step": 1, "loss": 1.0, "lr": 0.1}, {"step": 2, "loss": 0.9}])
    (tmp_path / "train_log.jsonl").open("a").write('{"step": 3, "lo')   # a line cut by a kill
    assert set(plot_run(tmp_path)) == {"training"}


def test_hard_easy_split():
    row = {"tau": [0.7, 1.3, 0.9], "difficulty": [0.9, 0.05, 0.1, 0.5], "kept": [True, False, True, True]}
    hard, easy = hard_easy_tau(row)           # kept difficulties 0.9, 0.1, 0.5: median 0.5
    assert hard == [0.7] and easy == [1.3, 0.9]
    hard, easy = hard_easy_tau({"tau": [0.7, 1.3, 0.9, 1.0]})      # no difficulties: split on tau
    assert hard == [0.7] and sorted(easy) == [0.9, 1.0, 1.3]


def test_plot_table(tmp_path):
    bars = [{"label": "RKD", "mean": 30.0, "std": 0.5, "kind": "plain"},
            {"label": "+ AdaKD", "mean": 31.0, "std": 0.4, "kind": "adakd", "sig": True},
            {"label": "missing", "mean": None, "std": None, "kind": "adakd"}]
    p = plot_table(bars, tmp_path / "t.png", title="T")
    assert p.read_bytes()[:8] == PNG
    assert plot_table([], tmp_path / "none.png") is None


def test_difficulty_spread_bands_and_median():
    s = difficulty_spread([0.05, 0.1, 0.3, 0.5, 0.51, 0.9])
    assert s["tokens"] == 6
    assert s["below"] == pytest.approx(1 / 6) and s["inside"] == pytest.approx(3 / 6)   # 0.1 and 0.5 inclusive
    assert s["above"] == pytest.approx(2 / 6) and s["median"] == pytest.approx(0.4)
    assert difficulty_spread([0.2, 0.7, 0.01])["median"] == 0.2
    with pytest.raises(ValueError):
        difficulty_spread([])


def test_mid_training_rows_and_histogram(tmp_path):
    _fake_run(tmp_path, steps=60, every=10)        # telemetry at steps 1, 11, ..., 51; middle step 30
    rows = mid_training_rows([json.loads(x) for x in (tmp_path / "telemetry.jsonl").read_text().splitlines()], 60)
    assert [r["step"] for r in rows] == [21, 31]
    out = plot_difficulty_mid(tmp_path, tmp_path / "mid.png")
    assert out["steps"] == [21, 31] and out["total_steps"] == 60 and out["tokens"] == 100
    vals = [d for r in rows for d in r["difficulty"]]
    assert out["inside"] == pytest.approx(sum(0.1 <= v <= 0.5 for v in vals) / 100)
    assert (tmp_path / "mid.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "telemetry.jsonl").write_text("")
    with pytest.raises(ValueError, match="telemetry"):
        plot_difficulty_mid(tmp_path, tmp_path / "none.png")
