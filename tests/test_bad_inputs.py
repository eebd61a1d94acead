"""Bad input is refused up front: one message that names the key (or the file and line) and what is valid,
exit code 2, no traceback, and nothing trained or written (no run directory, no cache, no checkpoint).

Each row: overrides of `experiment=smoke` (a tiny Dolly-layout data root is `DATA`), then the substrings
the message must hold. The commands run through the CLI's own error path (experiment.cli.run_command) in this
process; tests/test_faults.py and the `integration` tests below start real processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adakd.errors import USER_ERROR_EXIT_CODE
from adakd.experiment.cli import run_command

from .compose import compose_cfg

ADAKD_RUN = Path(sys.executable).parent / "adakd-run"
DOLLY = ["dataset=dolly", "dataset.root={data}", "eval.benchmarks=[dolly]", "dataset.max_prompt_len=96",
         "dataset.max_len=128", "eval.max_prompt_len=96"]


def _record(i: int) -> dict:
    from adakd.data.prompts import render_prompt
    instruction = f"Name the color number {i} in the list."
    return {"instruction": instruction, "input": "", "output": f"The color number {i} is blue.",
            "prompt": render_prompt(instruction)}


@pytest.fixture
def data(tmp_path) -> Path:
    """A data root with the layout of ../shared/data: dolly train (40), dev (8) and test (8)."""
    root = tmp_path / "data"
    (root / "dolly").mkdir(parents=True)
    for split, n in (("train", 40), ("dev", 8), ("test", 8)):
        lines = [json.dumps(_record(i)) for i in range(n)]
        (root / "dolly" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _run(tmp_path, overrides, data=None):
    out = tmp_path / "out"
    ovs = ["experiment=smoke", "logger=none", "run.progress=false", f"run.output_root={out}"]
    ovs += [o.format(data=data) for o in overrides]
    return run_command(compose_cfg(ovs)), out


def _nothing_written(out: Path) -> None:
    """No run directory, no checkpoint, no model, no fine-tuned teacher. (A tokenizer trained on the data, which
    the length check needs, may be cached.)"""
    runs = out / "runs"
    made = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.exists() else []
    assert not made, f"a refused run wrote {made}"
    cache = [p.relative_to(out) for p in (out / "cache").glob("*/*")] if (out / "cache").exists() else []
    assert all(p.parts[1] == "tokenizer" for p in cache), f"a refused run built {cache}"


def _break_line(path: Path, line: int, content: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = content
    path.write_bytes(b"".join(lines))


CONFIG_CASES = {   # overrides -> substrings of the message
    "eval.batch_size=0": (["eval.batch_size=0"], ["eval.batch_size=0 is out of range [1, inf]"]),
    "unknown key added with +": (["+train.lrr=1"], ["train.lrr is not a setting", "did you mean lr?"]),
    "unknown arch field": (["+model.student.arch.n_layerz=3"],
                           ["model.student.arch.n_layerz is not a setting", "did you mean n_layer?"]),
    "unknown finetune field": (["+model.teacher.finetune.stepz=3"], ["model.teacher.finetune.stepz"]),
    "precision fp8": (["train.precision=fp8"], ["train.precision='fp8' is not valid", "bf16"]),
    "micro_batch 0 and other errors together": (
        ["train.micro_batch=0", "train.ckpt_every=-1", "eval.batch_size=0"],
        ["train.micro_batch=0 is out of range", "train.ckpt_every=-1 is out of range", "eval.batch_size=0"]),
    "threads -1": (["train.threads=-1"], ["train.threads=-1 is out of range [1, inf]"]),
    "device gpu": (["train.device=gpu"], ["train.device='gpu' is not valid", "cuda:N"]),
    "run.name traversal": (["run.name=../../x"], ["run.name='../../x' must be one plain name"]),
    "run.name absolute": (["run.name=/tmp/x"], ["run.name='/tmp/x' must be one plain name"]),
    "run.name with slashes": (["run.name=a/b"], ["run.name='a/b'"]),
    "run.name too long": ([f"run.name={'x' * 250}"], ["at most 100 characters"]),
    "n_train 0": (["dataset.n_train=0"], ["dataset.n_train=0 is out of range [1, inf]"]),
    "val_size 0": (["dataset.val_size=0"], ["dataset.val_size=0 is out of range"]),
    "model source": (["model.student.source=pretrainde"], ["model.student.source='pretrainde' is not valid"]),
    # issue 23: one rule for numbers (NaN passes every range check), unique seeds, interpolations, finetune ranges
    "temperature nan": (["eval.temperature=nan"], ["eval.temperature=nan is not a finite number"]),
    "top_p nan": (["eval.top_p=nan"], ["eval.top_p=nan is not a finite number"]),
    "lr inf": (["train.lr=inf"], ["train.lr=inf is not a finite number"]),
    "epochs inf": (["train.steps=null", "train.epochs=inf"], ["train.epochs=inf is not a finite number"]),
    "nan in a list": (["train.betas=[0.9,nan]"], ["train.betas[1]=nan is not a finite number"]),
    "nan in a free section": (["method=jsd", "method.params.beta=nan"], ["method.params.beta=nan is not a finite"]),
    "teacher fine-tune lr inf": (["model.teacher.finetune.lr=inf"],
                                 ["model.teacher.finetune.lr=inf is not a finite number"]),
    "teacher fine-tune lr negative": (["model.teacher.finetune.lr=-1"],
                                      ["model.teacher.finetune.lr=-1.0 is out of range (0.0, inf]"]),
    "duplicate generation seeds": (["eval.seeds=[10,10]"], ["eval.seeds=[10, 10] repeats [10]"]),
    # {{ }}: the rows go through str.format
    "interpolation error": (["train.lr=${{nope}}"], ["train.lr: Interpolation key 'nope' not found"]),
    "pretrained student with another tokenizer": (
        ["model.student.source=pretrained", "model.student.path=builtin:world-student"],
        ["model.student.path=builtin:world-student and the run's tokenizer (model.tokenizer=synthetic",
         "use different tokenizers: token id 257 is"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_settings_are_refused_before_anything_runs(case, tmp_path, capsys):
    overrides, needles = CONFIG_CASES[case]
    rc, out = _run(tmp_path, overrides)
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE, err
    assert err.startswith("adakd-run: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    _nothing_written(out)


def test_an_output_root_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    rc, _ = _run(tmp_path, [f"run.output_root={target}"])
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE and f"run.output_root={target} is not a directory" in err
    assert target.read_text() == "x"


def _bad_dev_json(root):
    _break_line(root / "dolly" / "dev.jsonl", 3, b'{"instruction": oops\n')
    return ["dev.jsonl, line 3: invalid JSON"]


def _bad_dev_utf8(root):
    _break_line(root / "dolly" / "dev.jsonl", 2, b'{"instruction": "caf\xe9"}\n')
    return ["dev.jsonl, line 2: not valid UTF-8", "0xe9"]


def _missing_dev(root):
    (root / "dolly" / "dev.jsonl").unlink()
    return ["benchmark 'dolly' (dev) not found", "dev.jsonl"]


def _bad_test_utf8(root):
    _break_line(root / "dolly" / "test.jsonl", 5, b"\xff\xfe\n")
    return ["test.jsonl, line 5: not valid UTF-8"]


def _bad_train_record(root):
    _break_line(root / "dolly" / "train.jsonl", 7, b'{"instruction": "x", "prompt": "p"}\n')
    return ["train.jsonl, line 7: missing field(s) output"]


def _dev_is_a_directory(root):
    (root / "dolly" / "dev.jsonl").unlink()
    (root / "dolly" / "dev.jsonl").mkdir()
    return ["benchmark 'dolly' (dev):", "dev.jsonl is a directory"]


def _dev_is_a_fifo(root):   # reading it would block forever
    (root / "dolly" / "dev.jsonl").unlink()
    os.mkfifo(root / "dolly" / "dev.jsonl")
    return ["dev.jsonl is not a regular file"]


def _deeply_nested_line(root):
    _break_line(root / "dolly" / "dev.jsonl", 2, b"[" * 200_000 + b"\n")
    return ["dev.jsonl, line 2: JSON nested too deeply"]


def _unreadable_dev(root):
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permissions")
    (root / "dolly" / "dev.jsonl").chmod(0)
    return ["dev.jsonl: cannot be read (Permission denied)"]


DATA_CASES = {"malformed dev line": _bad_dev_json, "non-UTF-8 dev byte": _bad_dev_utf8,
              "missing dev file": _missing_dev, "non-UTF-8 test byte": _bad_test_utf8,
              "training record without output": _bad_train_record,
              # issue 23
              "directory in place of a data file": _dev_is_a_directory, "FIFO in place of a data file": _dev_is_a_fifo,
              "pathologically nested JSON line": _deeply_nested_line, "unreadable data file": _unreadable_dev}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_refused_naming_file_and_line(case, data, tmp_path, capsys):
    """A broken dev file in particular never turns into a silent hold-out of the training set."""
    needles = DATA_CASES[case](data)
    rc, out = _run(tmp_path, DOLLY, data)
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    _nothing_written(out)


# ------------------------------------------------------------------ model directories (checked before loading)
def _copy_student(d: Path, keep=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")):
    import shutil
    from adakd.assemble.identity import model_path
    d.mkdir()
    for name in keep:
        shutil.copy(Path(model_path("builtin:world-student")) / name, d / name)


def _empty_model_dir(d):
    d.mkdir()
    return ["holds no config.json: not a model directory (empty)"]


def _malformed_config(d):
    _copy_student(d)
    (d / "config.json").write_text('{"model_type": "gpt2",')
    return ["config.json is unreadable or malformed"]


def _pickle_only(d):
    _copy_student(d, keep=("config.json",))
    (d / "pytorch_model.bin").write_bytes(b"not unpickled")
    return ["has no .safetensors weights, only pickle files (pytorch_model.bin), which adakd never loads"]


def _truncated_safetensors(d):   # no adakd_model.json: no checksum to catch it
    _copy_student(d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return ["model.safetensors is incomplete or corrupt", "its header lists"]


MODEL_DIR_CASES = {"empty": _empty_model_dir, "malformed config.json": _malformed_config,
                   "only a pickle .bin": _pickle_only, "truncated safetensors": _truncated_safetensors}


@pytest.mark.parametrize("case", list(MODEL_DIR_CASES))
def test_a_broken_model_directory_is_refused_before_loading(case, tmp_path, capsys):
    d = tmp_path / "student"
    needles = MODEL_DIR_CASES[case](d)
    rc, out = _run(tmp_path, ["model.student.source=pretrained", f"model.student.path={d}"])
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE and err.startswith("adakd-run: error: ") and "Traceback" not in err, err
    assert f"model.student.path: {d}" in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    _nothing_written(out)


def test_a_model_path_with_tilde_is_expanded_for_the_loader_too(tmp_path, monkeypatch):
    """The validator expanded `~`, the loader did not: one place (build.identity.model_path) expands it."""
    from adakd.assemble.construct import build_model
    from adakd.assemble.identity import model_path
    from adakd.models import load_tokenizer
    monkeypatch.setenv("HOME", str(tmp_path))
    _copy_student(tmp_path / "student")
    assert model_path("~/student") == str(tmp_path / "student")
    spec = compose_cfg(["model=world"]).model.student
    spec.path = "~/student"
    model = build_model(spec, load_tokenizer(model_path("~/student")))
    assert model.config.n_layer == 2


@pytest.mark.parametrize("extra,needles", [
    ([], ["dolly: prompts of up to 256 tokens (eval.max_prompt_len=256) leave no room for a new token in the 160 "
          "positions of the student", "model.student.arch.n_positions"]),
    (["dataset.max_len=512", "dataset.max_prompt_len=256", "dataset.overlong=truncate"],
     ["(dataset.max_len=512) are longer than the 160 positions of the student",
      "(dataset.max_len=512) are longer than the 160 positions of the teacher"]),
])
def test_sequences_longer_than_the_models_positions_are_refused(extra, needles, data, tmp_path, capsys):
    """The tiny pair takes 160 positions: `experiment=smoke dataset=dolly eval=dolly-cpu` evaluates prompts of
    up to 256 tokens (the protocol's cut), which used to fail with an IndexError after the whole training."""
    long = {**_record(99), "instruction": "Explain " + " and ".join(["this word"] * 150) + "."}
    from adakd.data.prompts import render_prompt
    long["prompt"] = render_prompt(long["instruction"])
    for split in ("train", "test"):
        with open(data / "dolly" / f"{split}.jsonl", "a") as f:
            f.write(json.dumps(long) + "\n")
    rc, out = _run(tmp_path, ["dataset=dolly", "dataset.root={data}", "eval=dolly-cpu"] + extra, data)
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    _nothing_written(out)


def test_missing_data_root_names_the_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ADAKD_DATA_DIR", raising=False)
    rc, out = _run(tmp_path, ["dataset=dolly", "dataset.root=null", "eval.benchmarks=[dolly]"])
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE
    assert "dataset.root" in err and "ADAKD_DATA_DIR" in err and "dataset.hub_repo" in err
    _nothing_written(out)


@pytest.mark.integration
def test_cli_help_and_a_refusal_through_the_console_script(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": ""}
    out = subprocess.run([str(ADAKD_RUN), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0
    assert out.stdout.startswith("adakd-run: token-adaptive knowledge distillation")
    assert "experiment=smoke" in out.stdout and "method: abkd" in out.stdout
    bad = subprocess.run([str(ADAKD_RUN), "experiment=smoke", "+train.lrr=1", f"run.output_root={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == USER_ERROR_EXIT_CODE and "Traceback" not in bad.stderr
    assert "adakd-run: error:" in bad.stderr and "train.lrr is not a setting" in bad.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
@pytest.mark.parametrize("args,needle", [
    (["model=nope"], "Could not find 'model/nope'"),                      # Hydra's composition error
    (["train.lr=["], "no viable alternative at input '['"),               # Hydra's override grammar
    (["run.output_root={file}"], "is not a directory"),                   # Hydra's own directories under it
])
def test_hydras_own_errors_exit_2_as_help_promises(args, needle, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": ""}
    out = subprocess.run([str(ADAKD_RUN), "experiment=smoke", f"run.output_root={tmp_path}"]
                         + [a.format(file=file) for a in args], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == USER_ERROR_EXIT_CODE, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and file.read_text() == "x"


# ------------------------------------------------------------------------- run identity and run directories
@pytest.fixture
def finished_dolly_run(data, tmp_path):
    """A finished smoke run on the tiny Dolly-layout data (1 thread), and its overrides."""
    ovs = DOLLY + ["train.steps=2", "train.threads=1"]
    rc, out = _run(tmp_path, ovs, data)
    assert rc == 0
    return ovs, out


def _metrics(out: Path) -> dict:
    (path,) = (out / "runs").glob("*/metrics.json")
    return json.loads(path.read_text())


@pytest.mark.integration
def test_a_changed_benchmark_file_is_evaluated_again(finished_dolly_run, data, tmp_path, caplog):
    ovs, out = finished_dolly_run
    first = _metrics(out)
    rc, _ = _run(tmp_path, ovs, data)             # unchanged: reused
    assert rc == 0 and _metrics(out)["run"]["total_seconds"] == first["run"]["total_seconds"]
    test = data / "dolly" / "test.jsonl"
    test.write_text(test.read_text().replace("blue", "red"))
    rc, _ = _run(tmp_path, ovs, data)             # changed: evaluated again, same directory (same training data)
    again = _metrics(out)
    assert rc == 0 and again["run"]["dir"] == first["run"]["dir"]
    assert again["protocol"]["data_files"]["dolly"][0]["sha256"] != first["protocol"]["data_files"]["dolly"][0]["sha256"]
    assert "changed since" in caplog.text


@pytest.mark.integration
def test_a_metrics_file_that_is_not_an_object_is_an_unfinished_run(finished_dolly_run, data, tmp_path):
    """issue 23: `[]` (valid JSON, not a result) crashed adakd-run; it is a run to finish, and is finished."""
    ovs, out = finished_dolly_run
    (path,) = (out / "runs").glob("*/metrics.json")
    path.write_text("[]")
    rc, _ = _run(tmp_path, ovs, data)
    assert rc == 0 and _metrics(out)["status"] == "ok"


@pytest.mark.integration
def test_changed_training_data_is_another_run(finished_dolly_run, data, tmp_path):
    ovs, out = finished_dolly_run
    train = data / "dolly" / "train.jsonl"
    train.write_text(train.read_text().replace("number 3 ", "number three "))
    assert _run(tmp_path, ovs, data)[0] == 0
    assert len(list((out / "runs").glob("*/metrics.json"))) == 2


@pytest.mark.integration
def test_a_run_is_not_reused_or_resumed_at_another_thread_count(finished_dolly_run, data, tmp_path, capsys):
    ovs, out = finished_dolly_run
    threads = [o for o in ovs if not o.startswith("train.threads")]
    rc, _ = _run(tmp_path, threads, data)   # train.threads unset: the same run directory, 1 thread (tests)
    assert rc == 0
    import torch
    torch.set_num_threads(2)
    try:
        rc, _ = _run(tmp_path, threads, data)
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE and "computed with 1 CPU thread(s)" in err and "train.threads=1" in err


@pytest.mark.integration
def test_two_identical_runs_started_together_one_trains_the_other_refuses(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [str(ADAKD_RUN), "experiment=smoke", "train.steps=60", "train.threads=1", "logger=none",
           "run.progress=false", f"run.output_root={tmp_path}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    done = [(p, *p.communicate(timeout=900)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in done)
    assert codes == [0, USER_ERROR_EXIT_CODE], [err for _, _, err in done]
    winner = next(p for p, _, _ in done if p.returncode == 0)
    err = next(e for p, _, e in done if p.returncode != 0)
    assert f"pid {winner.pid}" in err and "is in use by another process" in err and "Traceback" not in err
    (log,) = (tmp_path / "runs").glob("*/train_log.jsonl")
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [r["step"] for r in rows if r.get("split") != "dev"]
    assert steps == list(range(1, 61))   # one line per step: nobody else wrote into it


def test_a_stale_lock_of_a_killed_process_does_not_block(tmp_path):
    """The lock is the kernel's (flock): it goes with the process, whatever the process left on disk."""
    from adakd.io import hold_directory
    target = tmp_path / "runs" / "x-123"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".x-123.lock").write_text("99999\n")   # what a kill -9 leaves behind
    with hold_directory(target):
        pass
    code = "import sys, time; from adakd.io import hold_directory\nwith hold_directory(sys.argv[1]): time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(target)])
    try:
        import time
        for _ in range(300):
            if (tmp_path / "runs" / ".x-123.lock").read_text().strip() == str(holder.pid):
                break
            time.sleep(0.05)
        from adakd.errors import RunLocked
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            with hold_directory(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_directory(target):   # killed: free again at once
        pass


def test_replacing_a_model_directory_never_loses_both_versions(tmp_path, monkeypatch):
    from adakd.models import storage
    out = tmp_path / "model"

    def write(text):
        return lambda d: (Path(d) / "w.txt").write_text(text)
    storage.save_dir_atomically(out, write("v1"))
    real = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real(src, dst)
    monkeypatch.setattr(storage.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        storage.save_dir_atomically(out, write("v2"))
    monkeypatch.setattr(storage.os, "replace", real)
    assert (tmp_path / ".model.old" / "w.txt").read_text() == "v1"   # the old version is still on disk
    storage.save_dir_atomically(out, write("v3"))                   # and the next save puts things right
    assert (out / "w.txt").read_text() == "v3" and not (tmp_path / ".model.old").exists()


def test_every_package_goes_into_the_wheel():
    """setup.py finds the packages (a missing `adakd.recipes` once broke `pip install .`)."""
    from setuptools import find_packages
    src = Path(__file__).resolve().parents[1] / "src"
    found = set(find_packages(str(src)))
    dirs = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("*.py")}
    assert dirs <= found, f"directories with modules that are not packages: {sorted(dirs - found)}"


def test_the_sweep_summary_keeps_the_whole_error_and_points_only_to_written_files(tmp_path):
    """issue 23: a config error's keys are on its later lines; a job refused by a lock writes no failure.json."""
    from adakd.experiment.sweep import format_summary
    jobs = [{"status": "failed", "overrides": ["adakd.c=-1"], "run_dir": str(tmp_path / "a"),
             "error": "ConfigError: invalid configuration:\n  - adakd.c=-1.0 is out of range [0.0, inf]"},
            {"status": "failed", "overrides": ["train.seed=2"], "run_dir": str(tmp_path / "b"),
             "error": "RunLocked: the run directory is in use"},
            {"status": "failed", "overrides": ["train.seed=3"], "run_dir": str(tmp_path / "c"),
             "error": "RuntimeError: boom", "details": str(tmp_path / "c" / "failure.json")}]
    text = format_summary({"sweep_dir": str(tmp_path), "jobs": 3, "ok": 0, "skipped": 0, "failed": 3,
                           "seconds": 1.0, "results": jobs})
    assert "adakd.c=-1.0 is out of range [0.0, inf]" in text
    assert text.count("details:") == 1 and f"details: {tmp_path / 'c' / 'failure.json'}" in text


# ------------------------------------------------------------------------- dev validation (issue 23, item 4)
def _overlong_dev(root):
    """Every dev record's response longer than dataset.max_len: no dev sequence to score val_ce / val_kd on."""
    records = [{**_record(i), "output": " ".join(["blue"] * 400)} for i in range(8)]
    (root / "dolly" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return ["dev validation needs at least one dev example within the length limits",
            "none of the 8 dev records fits dataset.max_prompt_len=96 / dataset.max_len=128", "train.val_every=0"]


DEV_VALIDATION_CASES = {   # name -> (overrides, how the data is broken (None: not at all), substrings)
    "no dev record within the limits": ([], _overlong_dev, None),
    "val_budget nan": (["train.val_budget=nan"], None, ["train.val_budget=nan must be a finite share > 0"]),
    "val_budget 0": (["train.val_budget=0"], None, ["train.val_budget=0.0 must be a finite share > 0"]),
    "val_examples 0": (["train.val_examples=0"], None, ["train.val_examples=0 is out of range [1, inf]"]),
}


@pytest.mark.parametrize("case", list(DEV_VALIDATION_CASES))
def test_dev_validation_without_anything_to_score_is_refused(case, data, tmp_path, capsys):
    """It used to log val_ce = val_kd = NaN with one INFO line, and train.select=best_dev selected on them."""
    overrides, breaks, needles = DEV_VALIDATION_CASES[case]
    needles = breaks(data) if breaks else needles
    rc, out = _run(tmp_path, DOLLY + overrides, data)
    err = capsys.readouterr().err
    assert rc == USER_ERROR_EXIT_CODE and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    _nothing_written(out)


def test_overlong_dev_records_are_fine_without_validation(data, tmp_path):
    _overlong_dev(data)
    rc, out = _run(tmp_path, DOLLY + ["train.val_every=0", "train.steps=1", "train.threads=1"], data)
    assert rc == 0 and _metrics(out)["status"] == "ok"
