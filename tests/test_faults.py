"""Fault injection on the real entry point (issue 8): kill -9 in the middle of training and of evaluation,
SIGTERM pre-emption in training and in evaluation (exit code 75, W&B offline files kept), a corrupt
checkpoint, a malformed data file, a NaN in the loss, an interrupted sweep and a failing sweep job.
Every rerun is the same command, and its results must equal those of an uninterrupted run (CPU, same
seed) to the last bit: metrics, final weights, training log, telemetry and predictions.

Marked `faults`; they run in the default suite (`make test`), about two minutes on a 2-core machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .compose import compose_cfg

pytestmark = [pytest.mark.faults, pytest.mark.integration]   # kill -9, SIGTERM: processes

ADAKD_RUN = Path(sys.executable).parent / "adakd-run"
# The smoke experiment, long enough to be killed in the middle: 40 steps, a checkpoint every 5.
BASE = ["experiment=smoke", "train.steps=40", "train.ckpt_every=5", "run.progress=false", "logger=none",
        "train.threads=1"]


def _env(**extra):
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _run(args, root: Path, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(ADAKD_RUN), *args, f"run.output_root={root}"], cwd=root.parent,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout, check=False)


def _start(args, root: Path, **env) -> subprocess.Popen:
    with open(root.parent / f"{root.name}.attempt1.log", "w") as log:   # the child keeps its own handle
        return subprocess.Popen([str(ADAKD_RUN), *args, f"run.output_root={root}"], cwd=root.parent,
                                env=_env(**env), stdout=log, stderr=subprocess.STDOUT)


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout=240):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc={proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ok(r: subprocess.CompletedProcess):
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])


def _same_results(run_dir: Path, base_dir: Path) -> dict:
    """Same metrics values, same final weights, same training log as the uninterrupted run."""
    m, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, base_dir))
    assert m["status"] == "ok"
    assert m["rougeL"] == b["rougeL"] and m["avg"] == b["avg"]
    assert m["run"]["final_loss"] == b["run"]["final_loss"]
    assert _sha(run_dir / "model" / "model.safetensors") == _sha(base_dir / "model" / "model.safetensors")
    assert (run_dir / "telemetry.jsonl").read_text() == (base_dir / "telemetry.jsonl").read_text()
    # the training log line by line, but for the dev validations' wall time (a timing, not a result)
    logs = [[{k: v for k, v in json.loads(x).items() if k != "val_seconds"}
             for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (run_dir, base_dir)]
    assert logs[0] == logs[1]
    for f in (base_dir / "predictions").glob("*.jsonl"):
        assert (run_dir / "predictions" / f.name).read_text() == f.read_text(), f.name
    return m


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with (its teacher cache is reused)."""
    root = tmp_path_factory.mktemp("baseline") / "out"
    root.mkdir()
    _ok(_run(BASE, root))
    (run_dir,) = [d for d in (root / "runs").iterdir() if d.is_dir()]   # .<name>.lock files sit beside
    return root, run_dir


def _fresh_root(tmp_path: Path, baseline) -> Path:
    """A new output root holding only the baseline's caches (tokenizer, fine-tuned teacher)."""
    root = tmp_path / "out"
    shutil.copytree(baseline[0] / "cache", root / "cache")
    return root


def _ckpts(run_dir: Path):
    d = run_dir / "checkpoints"
    return sorted(p.name for p in d.iterdir() if p.name.startswith("step_")) if d.exists() else []


# ---------------------------------------------------------------------------------------- training
def test_sigkill_mid_training_then_rerun_gives_identical_results(tmp_path, baseline):
    root = _fresh_root(tmp_path, baseline)
    run_dir = root / "runs" / baseline[1].name   # same config -> same directory
    p = _start(BASE, root)
    _wait_for(lambda: (run_dir / "checkpoints" / "step_00000015").exists(), p, "the step-15 checkpoint")
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    _ok(_run(BASE, root))
    m = _same_results(run_dir, baseline[1])
    assert 15 <= m["run"]["resumed_from"] < 40


def test_sigterm_preempts_with_exit_75_and_rerun_resumes(tmp_path, baseline):
    root = _fresh_root(tmp_path, baseline)
    run_dir = root / "runs" / baseline[1].name   # logger is not part of the run's identity
    args = [a for a in BASE if a != "logger=none"] + ["logger=wandb"]
    wb = str(tmp_path / "wb")
    wandb_env = {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": wb, "WANDB_CACHE_DIR": wb, "WANDB_DATA_DIR": wb}
    p = _start(args, root, **wandb_env)
    _wait_for(lambda: (run_dir / "checkpoints" / "step_00000010").exists(), p, "the step-10 checkpoint")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 75
    out = (tmp_path / "out.attempt1.log").read_text()
    assert "run the same command again to resume" in out
    step = int(_ckpts(run_dir)[-1][len("step_"):])
    assert 10 <= step < 40   # saved at the step boundary where the signal was seen
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r.get("split") != "dev"]) == step   # one training row per step
    first = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert first, "the pre-empted attempt's W&B offline files are missing"

    r = _run(args, root, **wandb_env)
    _ok(r)
    m = _same_results(run_dir, baseline[1])
    assert m["run"]["resumed_from"] == step
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert set(first) <= set(runs) and list((run_dir / "wandb").glob("offline-run-*/*.wandb")), \
        "W&B offline files must be kept for a later `wandb sync`"


# -------------------------------------------------------------------------------------- evaluation
_EVAL_FAULT_DRIVER = """
import os, signal, sys
mode = os.environ["FAULT"]
if mode == "kill":   # the process dies between writing the predictions and publishing them
    real = os.replace
    def replace(src, dst, *a, **k):
        if "predictions" in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
else:                # pre-empted while generating: no step boundary to wait for
    import adakd.evaluation.evaluate as ev
    real_generate = ev.generate
    def generate(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_generate(*a, **k)
    ev.generate = generate
from adakd.experiment.cli import main
sys.argv = ["adakd-run", *sys.argv[1:]]
main()
"""


def test_sigkill_mid_evaluation_and_corrupt_checkpoint_then_rerun(tmp_path, baseline):
    root = _fresh_root(tmp_path, baseline)
    run_dir = root / "runs" / baseline[1].name
    driver = tmp_path / "driver.py"
    driver.write_text(_EVAL_FAULT_DRIVER)

    def attempt(fault):
        return subprocess.run([sys.executable, str(driver), *BASE, f"run.output_root={root}"], cwd=tmp_path,
                              env=_env(FAULT=fault), capture_output=True, text=True, timeout=300, check=False)
    r = attempt("term")   # SIGTERM during evaluation: the pre-emption exit code too
    assert r.returncode == 75, r.stderr[-3000:]
    assert "outside the training loop" in r.stdout + r.stderr
    r = attempt("kill")   # resumes at step 40 (nothing to train), then dies writing the predictions
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (run_dir / "model" / "model.safetensors").exists()                 # training had finished
    assert not (run_dir / "predictions" / "synthetic.jsonl").exists()        # nothing half-written
    assert not (run_dir / "metrics.json").exists()
    assert _ckpts(run_dir) == ["step_00000035", "step_00000040"]

    # ... and the newest checkpoint got damaged: it is refused, the previous one is used.
    f = run_dir / "checkpoints" / "step_00000040" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    r = _run(BASE, root)
    _ok(r)
    assert "refusing checkpoint" in r.stdout + r.stderr and "step_00000040" in r.stdout + r.stderr
    m = _same_results(run_dir, baseline[1])
    assert m["run"]["resumed_from"] == 35
    assert (run_dir / "checkpoints" / "corrupt-step_00000040").is_dir()


# ------------------------------------------------------------------------------------------ bad data
def test_broken_line_3_fails_fast_naming_file_and_line(tmp_path):
    data = tmp_path / "data" / "dolly"
    data.mkdir(parents=True)
    good = {"instruction": "Name a colour.", "input": "", "output": "Red.",
            "prompt": "Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"}
    lines = [json.dumps(good)] * 6
    lines[2] = lines[2][: len(lines[2]) // 2]   # line 3: cut in the middle of the record
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    for split in ("dev", "test"):
        (data / f"{split}.jsonl").write_text("\n".join([json.dumps(good)] * 6) + "\n")
    root = tmp_path / "out"
    root.mkdir()
    t0 = time.time()
    r = _run(["experiment=smoke", "dataset=dolly", f"dataset.root={tmp_path / 'data'}",
              "eval.benchmarks=[dolly]",
              "run.progress=false", "logger=none", "train.threads=1"], root, timeout=120)
    elapsed = time.time() - t0
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"{data / 'train.jsonl'}, line 3" in out, out[-3000:]
    assert not (root / "cache").exists(), "a tokenizer or model was built before the data was read"
    assert elapsed < 60, f"took {elapsed:.0f} s to refuse a broken file"


# ------------------------------------------------------------------------------------------ NaN loss
def test_nan_in_loss_stops_keeps_checkpoint_and_rerun_finishes(tmp_path, baseline, monkeypatch):
    from adakd.experiment import runner
    from adakd.training.diagnostics import NonFiniteLoss
    from adakd.training.loop import Trainer
    root = _fresh_root(tmp_path, baseline)
    cfg = compose_cfg(["experiment=smoke", "train.steps=12", "train.ckpt_every=3", "run.progress=false",
                       "logger=none", "train.threads=1", f"run.output_root={root}"])
    run_dir = runner.run_dir_for(cfg)
    real = Trainer.losses

    def nan_at_step_7(self, batch, telemetry):
        ce, kd, stats = real(self, batch, telemetry)
        return ce, (kd * float("nan") if self.step + 1 == 7 else kd), stats
    monkeypatch.setattr(Trainer, "losses", nan_at_step_7)
    with pytest.raises(NonFiniteLoss) as e:
        runner.run(cfg)
    msg = str(e.value)
    assert "non-finite loss=nan at step 7" in msg and "method=rkl" in msg and "step_00000006" in msg
    assert _ckpts(run_dir) == ["step_00000003", "step_00000006"]
    assert not (run_dir / "metrics.json").exists()

    monkeypatch.setattr(Trainer, "losses", real)   # a transient fault: the same command resumes at step 6
    m = runner.run(cfg)
    assert m["status"] == "ok" and m["run"]["resumed_from"] == 6 and m["run"]["steps"] == 12


# --------------------------------------------------------------------------------------------- sweeps
SWEEP = ["-m", "experiment=smoke", "adakd=none", "train.lr=3e-3,2e-3", "train.steps=20", "train.ckpt_every=5",
         "run.progress=false", "logger=none", "train.threads=1"]


def test_interrupted_sweep_rerun_skips_finished_and_resumes_the_rest(tmp_path, baseline):
    root = _fresh_root(tmp_path, baseline)
    runs = root / "runs"

    def second_job_has_checkpoint():
        if not runs.exists():
            return False
        done = [d for d in runs.iterdir() if (d / "metrics.json").exists()]
        going = [d for d in runs.iterdir() if not (d / "metrics.json").exists() and _ckpts(d)]
        return len(done) == 1 and len(going) == 1
    p = _start(SWEEP, root)
    _wait_for(second_job_has_checkpoint, p, "the first job to finish and the second to checkpoint")
    p.send_signal(signal.SIGKILL)
    p.wait()
    (first,) = [d for d in runs.iterdir() if (d / "metrics.json").exists()]
    stamp = (first / "metrics.json").stat().st_mtime_ns

    r = _run(SWEEP, root)
    _ok(r)
    assert (first / "metrics.json").stat().st_mtime_ns == stamp   # finished job skipped, not redone
    (second,) = [d for d in runs.iterdir() if d != first and d.is_dir()]
    m = json.loads((second / "metrics.json").read_text())
    assert m["status"] == "ok" and m["run"]["resumed_from"] and m["run"]["resumed_from"] >= 5


def test_failing_job_does_not_stop_the_sweep(tmp_path, baseline):
    try:
        import adakd.experiment.sweep  # noqa: F401
    except ImportError:
        pytest.xfail("the sweep failure summary (adakd.sweep) does not exist yet")
    root = _fresh_root(tmp_path, baseline)
    r = _run(["-m", "experiment=smoke", "adakd=none", "adakd.c=-1,0.5", "train.steps=4", "run.progress=false",
              "logger=none", "train.threads=1"], root)
    assert r.returncode != 0, "a sweep with a failed job must not report success"
    finished = [d for d in (root / "runs").iterdir() if (d / "metrics.json").exists()]
    assert len(finished) == 1, "the good job did not run after the failing one"
    (summary,) = (root / "hydra" / "multirun").glob("*/sweep_summary.json")
    s = json.loads(summary.read_text())
    assert s["failed"] == 1 and s["ok"] == 1
    # issue 23: the refused job (a bad setting) leaves no run directory of its own, and the summary shows the
    # whole error (the key), pointing to no failure.json that was never written
    assert [d for d in (root / "runs").iterdir() if d.is_dir()] == finished
    assert "adakd.c=-1.0 is out of range" in r.stdout and "details:" not in r.stdout
