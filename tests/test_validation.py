"""Validation on the dev split during training (training.validation): records in train_log.jsonl, the plot,
numbers comparable across AdaKD settings, best-on-dev selection, and no effect on the training itself."""
from __future__ import annotations

import json

import pytest

from adakd.experiment import runner
from adakd.training.validation import validation_steps

from .compose import compose_cfg

pytestmark = pytest.mark.integration   # whole smoke runs, in this process

# No budget: these tests are about what a validation measures (tests/test_val_plan.py: how many the budget allows)
SMOKE = ["experiment=smoke", "logger=none", "run.progress=false", "train.threads=1", "train.val_every=4",
         "train.val_budget=null"]


def _dev_rows(cfg):
    rows = [json.loads(x) for x in (runner.run_dir_for(cfg) / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "dev"], [r for r in rows if "loss" in r]


def test_validation_steps():
    assert validation_steps(4, 12, None) == [0, 4, 8, 12]
    assert validation_steps(5, 12, None) == [0, 5, 10, 12]          # the last step always
    assert validation_steps(None, 100, 30) == [0, 30, 60, 90, 100]  # once per epoch
    assert validation_steps(None, 100, None) == [0, 20, 40, 60, 80, 100]
    assert validation_steps(0, 100, None) == []


def test_validation_records_plot_and_comparable_divergence(tmp_path):
    """adakd=none and adakd=full start from the same student and teacher: their all-token divergence on dev
    at step 0 is the same number (no selection, no temperatures), and so are CE and ROUGE-L."""
    rows = {}
    for adakd in ("none", "full"):
        cfg = compose_cfg(SMOKE + [f"adakd={adakd}", f"run.output_root={tmp_path}"])
        m = runner.run(cfg)
        dev, train = _dev_rows(cfg)
        assert [r["step"] for r in dev] == [0, 4, 8, 12]
        assert {"val_ce", "val_kd", "val_rougeL", "val_seconds"} <= set(dev[0])
        assert (runner.run_dir_for(cfg) / "plots" / "validation.png").stat().st_size > 0
        assert m["run"]["dev_eval_seconds"] > 0 and m["run"]["selected"] == {"select": "last", "step": 12}
        info = json.loads((runner.run_dir_for(cfg) / "run_info.json").read_text())
        assert info["dev_eval_seconds"] == m["run"]["dev_eval_seconds"]
        rows[adakd] = dev
    a, b = rows["none"][0], rows["full"][0]
    assert (a["val_kd"], a["val_ce"], a["val_rougeL"]) == (b["val_kd"], b["val_ce"], b["val_rougeL"])
    assert rows["none"][-1]["val_kd"] != rows["full"][-1]["val_kd"]   # they train differently


def test_validating_changes_nothing_in_training(tmp_path):
    base = ["experiment=smoke", "logger=none", "run.progress=false", "train.threads=1"]
    losses = []
    for every in (0, 3):
        cfg = compose_cfg(base + [f"train.val_every={every}", f"run.output_root={tmp_path / str(every)}"])
        m = runner.run(cfg)
        losses.append(([r["loss"] for r in _dev_rows(cfg)[1]], m["rougeL"]))
    assert losses[0] == losses[1]


def test_best_dev_exports_the_step_it_names(tmp_path):
    cfg = compose_cfg(SMOKE + ["train.select=best_dev", "train.val_every=3", f"run.output_root={tmp_path}"])
    m = runner.run(cfg)
    dev, _ = _dev_rows(cfg)
    best = max(dev, key=lambda r: (r["val_rougeL"], -r["step"]))   # the first of the best
    assert m["run"]["selected"] == {"select": "best_dev", "step": best["step"], "dev_rougeL": best["val_rougeL"]}
    run_dir = runner.run_dir_for(cfg)
    assert json.loads((run_dir / "model" / "adakd_model.json").read_text())["selected"]["step"] == best["step"]
    # the exported weights are those of the best checkpoint
    from safetensors.torch import load_file
    exported = load_file(str(run_dir / "model" / "model.safetensors"))
    (best_ckpt,) = (run_dir / "best").glob("step_*")
    saved = load_file(str(best_ckpt / "model.safetensors"))
    shared = [k for k in exported if k in saved]
    assert shared and all((exported[k] == saved[k]).all() for k in shared)
    assert int(best_ckpt.name.split("_")[1]) == best["step"]
