"""Records two processes can write have one owner (issue 23): a shared cache is built under a lock by one
process while another waits for it and then reuses it; two sweeps started together keep separate records.

All of these start real processes racing each other (`integration`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ADAKD_RUN = Path(sys.executable).parent / "adakd-run"

# A builder: takes the lock, records that it builds, builds slowly (a marker file), records the end.
BUILDER = """
import logging, sys, time
from pathlib import Path
from adakd.io import build_lock
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
target, log = Path(sys.argv[1]), Path(sys.argv[2])
if not target.exists():
    with build_lock(target, "test cache", report_every=0.2, poll=0.05):
        if not target.exists():
            with open(log, "a") as f:
                f.write("build\\n")
            time.sleep(float(sys.argv[3]))
            target.write_text("built")
print("reused" if log.read_text().count("build") else "none", flush=True)
"""


def test_a_second_process_waits_for_the_build_then_reuses_it(tmp_path):
    target, log = tmp_path / "cache" / "thing", tmp_path / "builds.log"
    log.write_text("")
    first = subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(log), "2.0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):   # the first holds the lock (its pid is in the lock file)
        lock = tmp_path / "cache" / ".thing.lock"
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-c", BUILDER, str(target), str(log), "0"],
                            capture_output=True, text=True, timeout=60)
    first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert log.read_text() == "build\n"   # built once
    assert target.read_text() == "built"
    assert f"waiting for the test cache {target}: another process (pid {first.pid}) is building it" \
        in second.stderr
    assert "is free after" in second.stderr


def _smoke(out: Path, *extra: str) -> list:
    return [str(ADAKD_RUN), "experiment=smoke", "train.steps=2", "train.threads=1", "logger=none",
            "run.progress=false", "run.print_table=false", "eval.max_samples=4", f"run.output_root={out}",
            "model.teacher.finetune.steps=200", *extra]


def test_two_runs_that_need_one_fine_tuned_teacher_fine_tune_it_once(tmp_path):
    """Two different runs (train.seed 1 and 2) of one teacher recipe, started together: one fine-tunes, the
    other waits for the cache and loads it; the cache's log has one line per step."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    procs = [subprocess.Popen(_smoke(tmp_path, f"train.seed={s}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for s in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (cache,) = [d for d in (tmp_path / "cache" / "teacher").iterdir() if d.is_dir() and not d.name.endswith(".work")]
    steps = [json.loads(x)["step"] for x in (cache / "train_log.jsonl").read_text().splitlines()
             if json.loads(x).get("split") != "dev"]
    assert steps == list(range(1, 201))   # one fine-tune: one line per step
    assert sum("fine-tuning the teacher" in o for o in outs) == 1, outs
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 2


def test_two_sweeps_started_together_keep_separate_complete_records(tmp_path):
    """Each launch has its own sweep directory (the second's name, not only its time, differs)."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [str(ADAKD_RUN), "-m", "experiment=smoke", "train.steps=1", "train.threads=1", "logger=none",
           "run.progress=false", "run.print_table=false", "eval.max_samples=2", "train.val_every=0",
           f"run.output_root={tmp_path}"]
    procs = [subprocess.Popen(cmd + [f"train.seed={a},{b}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for a, b in ((1, 2), (3, 4))]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summaries = sorted((tmp_path / "hydra" / "multirun").glob("*/sweep_summary.json"))
    assert len(summaries) == 2
    seeds = []
    for s in summaries:
        rec = json.loads(s.read_text())
        assert rec["jobs"] == 2 and rec["failed"] == 0
        seeds.append(sorted(o for j in rec["results"] for o in j["overrides"] if o.startswith("train.seed")))
    assert sorted(seeds) == [["train.seed=1", "train.seed=2"], ["train.seed=3", "train.seed=4"]]


def test_two_commands_that_need_one_generated_tokenizer_train_it_once(tmp_path, monkeypatch):
    """The BPE cached for a generated dataset is a shared cache too: two commands started together train it once
    (the second waits and loads it), where both used to write the directory and one could lose it under the
    other (the race behind a failure of the two-sweeps test above)."""
    import threading

    from adakd.assemble import tokenizer as tk
    from adakd.assemble.context import Context
    from adakd.assemble.data import run_data

    from .compose import compose_cfg
    cfg = compose_cfg(["experiment=smoke", f"run.output_root={tmp_path}"])
    data = run_data(cfg.dataset, Context())
    builds, real = [], tk.train_bpe_tokenizer

    def slow_build(*a, **k):   # long enough that the second command arrives while the first is training
        builds.append(threading.get_ident())
        time.sleep(1.0)
        return real(*a, **k)

    monkeypatch.setattr(tk, "train_bpe_tokenizer", slow_build)
    start, vocabs, errors = threading.Barrier(2), [], []

    def command():
        start.wait()
        try:
            vocabs.append(tk._run_tokenizer(cfg, data, Context(), None)[0].get_vocab())
        except Exception as e:   # noqa: BLE001 -- any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=command) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(vocabs) == 2 and vocabs[0] == vocabs[1]
    assert len(builds) == 1
