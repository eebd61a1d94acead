"""Reliability (issue 8), in-process and fast: atomic files, checkpoints (keep K, corrupt -> previous,
pickles refused), exact resume of the trainer (weights, optimizer, scheduler, LATF/CTKD state, RNG, data
and log positions), pre-emption, non-finite loss/gradients (diagnostic, skip policy), bad input failing
before any expensive work, and safe loading. Kill -9 of real processes is in test_faults.py.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.training import checkpoint as ckpt
from adakd import io as aio
from adakd.training.signals import PREEMPTED_EXIT_CODE, Preempted
from adakd.training.diagnostics import NonFiniteLoss
from adakd.training.loop import Trainer
from adakd.training.settings import train_settings
from adakd.training.logs import truncate_log as _truncate_log

from .compose import compose_cfg
from .helpers_tiny import tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def encoded():
    from adakd.data import encode_example
    from adakd.data.synthetic import generate
    tok = tiny_tokenizer()
    out = []
    for ex in generate("train", 48, seed=0):
        e = encode_example(tok, ex.prompt, ex.references[0], max_prompt_len=100, max_len=128,
                           overlong="truncate")
        if e is not None:
            out.append(e)
    assert len(out) >= 32
    return out


def _model(seed: int, dropout: float = 0.0, n_layer: int = 1):
    from adakd.models import model_from_arch
    tok = tiny_tokenizer()
    arch = {"n_layer": n_layer, "n_embd": 32, "n_head": 2, "n_positions": 160,
            "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
    return model_from_arch(arch, len(tok), seed, tok.eos_token_id)


def _cfg(overrides=()):
    return compose_cfg(["experiment=smoke", "logger=none", "train.global_batch=8", "train.micro_batch=4",
                        "train.ckpt_every=3", "train.lr=3e-3", "train.warmup_steps=0",
                        "adakd.telemetry_every=2",
                        *overrides])


def _trainer(tmp: Path, encoded, cfg, *, steps: int = 8, dropout: float = 0.1, on_step_end=None,
             world_size: int = 1, rank: int = 0):
    from adakd.data import collate_train
    from adakd.kd.objective import build_objective
    from adakd.tracking import NullLogger
    tok = tiny_tokenizer()
    teacher = _model(1, n_layer=2).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    objective = build_objective(cfg.method, cfg.adakd, total_steps=steps, impl=cfg.train.loss_impl,
                                chunk_size=cfg.train.loss_chunk_size, seed=int(cfg.train.seed))
    settings = train_settings(cfg.train, total_steps=steps, method=cfg.method, progress=False,
                              telemetry_every=int(cfg.adakd.telemetry_every), world_size=world_size, rank=rank)
    return Trainer(settings, student=_model(2, dropout), teacher=teacher, train_data=encoded,
                   collate=lambda b: collate_train(b, tok.pad_token_id), objective=objective, run_dir=tmp,
                   logger=NullLogger(), device=torch.device("cpu"), on_step_end=on_step_end)


def _scramble_rng():
    """What another piece of code (or a fresh process) leaves in the global generators."""
    random.seed(12345)
    np.random.seed(54321)
    torch.manual_seed(999)


class _Crash(Exception):
    pass


def _crash_at(step):
    def hook(trainer, row):
        if trainer.step == step:
            raise _Crash(f"simulated crash after step {step}")
    return hook


def _assert_same_training(a: Trainer, b: Trainer):
    for (name, pa), (_, pb) in zip(a.student.named_parameters(), b.student.named_parameters()):
        assert torch.equal(pa, pb), f"weights differ: {name}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for k in sa["state"]:
        for key, va in sa["state"][k].items():
            vb = sb["state"][k][key]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, f"optimizer state {k}.{key}"
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert a.objective.state_dict().keys() == b.objective.state_dict().keys()
    oa, ob = a.objective.state_dict(), b.objective.state_dict()
    assert oa["ratio_schedule"] == ob["ratio_schedule"] and oa["temperature"] == ob["temperature"]
    if "generator" in oa:
        assert torch.equal(oa["generator"], ob["generator"])
    assert (a.step, a.position, a.skipped) == (b.step, b.position, b.skipped)
    for f in ("train_log.jsonl", "telemetry.jsonl"):
        assert (a.run_dir / f).read_text() == (b.run_dir / f).read_text(), f


# ----------------------------------------------------------------------------------------- atomic I/O
def test_atomic_write_keeps_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    aio.atomic_write_json(target, {"avg": 1.0})

    def boom(src, dst):
        raise KeyboardInterrupt("killed between write and rename")
    monkeypatch.setattr(aio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        aio.atomic_write_json(target, {"avg": 2.0})
    assert json.loads(target.read_text()) == {"avg": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]   # no temp file left behind


def test_atomic_write_has_normal_permissions(tmp_path):
    p = aio.atomic_write_text(tmp_path / "x.txt", "hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask   # not mkstemp's private 0600


def test_cut_jsonl_line_is_dropped_and_log_truncated_to_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    rows = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8))
    log.write_text(rows + '{"step": 8, "lo')   # the last line, cut by a kill
    assert [r["step"] for r in aio.read_jsonl_prefix(log)] == list(range(1, 8))
    _truncate_log(log, 5)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    _truncate_log(log, 0)
    assert log.read_text() == ""


# -------------------------------------------------------------------------------------- checkpoints
def _save_steps(root: Path, steps, keep_last=2):
    model = _model(2)
    saved = {}
    for s in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * s)
        state = {"step": s, "rng": ckpt.capture_rng(), "t": torch.arange(3)}
        ckpt.save(root, s, model, state, keep_last=keep_last)
        saved[s] = {k: v.clone() for k, v in model.state_dict().items()}
    return saved


def test_checkpoints_keep_last_k(tmp_path):
    _save_steps(tmp_path, [1, 2, 3, 4, 5], keep_last=3)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_00000003", "step_00000004", "step_00000005"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp dirs


def _flip_byte(f: Path):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _pickle_with_code(path: Path):
    """A trainer_state.pt that would run code if unpickled, with checksums made to match."""
    torch.save({"step": 3, "x": _Evil()}, path / "trainer_state.pt")
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["trainer_state.pt"] = ckpt.file_sha256(path / "trainer_state.pt")
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [
    lambda p: _flip_byte(p / "model.safetensors"),
    lambda p: (p / "trainer_state.pt").write_bytes((p / "trainer_state.pt").read_bytes()[:100]),
    lambda p: (p / "meta.json").unlink(),
    lambda p: (p / "meta.json").write_text("{not json"),
    lambda p: (p / "meta.json").write_text(json.dumps({"step": 3, "files": {}})),
    _pickle_with_code,
], ids=["flipped-weights", "truncated-state", "no-meta", "bad-meta", "no-checksums", "pickled-code"])
def test_corrupt_checkpoint_is_refused_and_previous_used(tmp_path, damage, caplog):
    saved = _save_steps(tmp_path, [1, 2, 3])
    damage(tmp_path / "step_00000003")
    model = _model(2)
    with caplog.at_level("WARNING"):
        found = ckpt.load_latest(tmp_path, model)
    assert found is not None and found[0] == 2
    assert all(torch.equal(v, saved[2][k]) for k, v in model.state_dict().items())
    assert "refusing checkpoint" in caplog.text and "step_00000003" in caplog.text
    # set aside for a post-mortem, never considered again
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"]
    assert (tmp_path / "corrupt-step_00000003").is_dir()


def test_every_checkpoint_corrupt_means_fresh_start(tmp_path):
    _save_steps(tmp_path, [1, 2])
    for p in ckpt.list_checkpoints(tmp_path):
        _flip_byte(p / "model.safetensors")
    assert ckpt.load_latest(tmp_path, _model(2)) is None


def test_kill_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _save_steps(tmp_path, [1])
    real = torch.save

    def dying_save(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, _model(2), {"step": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    assert ckpt.load_latest(tmp_path, _model(2))[0] == 1


def test_leftovers_of_a_kill_are_tidied(tmp_path):
    _save_steps(tmp_path, [1, 2])
    (tmp_path / ".step_00000003.abc").mkdir()                                  # half-written temp dir
    os.replace(tmp_path / "step_00000002", tmp_path / ".trash-step_00000002")   # killed mid re-save
    found = ckpt.load_latest(tmp_path, _model(2))
    assert found[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    torch.save({"rng": ckpt.capture_rng()}, tmp_path / "s.pt")
    want = (torch.rand(3), random.random(), np.random.rand())
    _scramble_rng()
    ckpt.restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


# ------------------------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("variant", [
    ["adakd.metric=random", "adakd.ema_beta=0.5", "adakd.warmup_frac=0.25", "adakd.epsilon=0.0"],
    ["adakd=latf", "adakd.temperature=ctkd", "method.kd_ratio=0.5"],   # a learned temperature + a CE term
], ids=["latf-idts-random-metric", "ctkd-with-ce"])
def test_crash_and_resume_is_bit_exact(tmp_path, encoded, variant):
    cfg = _cfg(variant)
    full = _trainer(tmp_path / "full", encoded, cfg)
    full.train()

    _scramble_rng()
    broken = _trainer(tmp_path / "broken", encoded, cfg, on_step_end=_crash_at(5))
    with pytest.raises(_Crash):
        broken.train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "broken" / "checkpoints")] == ["step_00000003"]
    _scramble_rng()   # a new process starts with other generator states
    again = _trainer(tmp_path / "broken", encoded, cfg)
    result = again.train()
    assert result.resumed_from == 3 and result.steps == 8
    assert result.final_loss == full.last_loss
    _assert_same_training(full, again)
    assert torch.equal(torch.get_rng_state(), _rng_after(full))
    rows = [json.loads(x) for x in (tmp_path / "broken" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))   # no duplicated or missing log rows
    if "adakd.metric=random" in variant:
        assert len({r["ratio_next"] for r in rows}) > 1, "LATF ratio never moved: its state would go untested"


def _rng_after(trainer):
    last = ckpt.list_checkpoints(trainer.ckpt_dir)[-1]
    return torch.load(last / "trainer_state.pt", weights_only=True)["rng"]["torch"]


def test_fresh_start_after_crash_before_first_checkpoint(tmp_path, encoded):
    cfg = _cfg()
    full = _trainer(tmp_path / "full", encoded, cfg, steps=5)
    full.train()
    broken = _trainer(tmp_path / "b", encoded, cfg, steps=5, on_step_end=_crash_at(2))
    with pytest.raises(_Crash):
        broken.train()
    torch.manual_seed(7)   # e.g. a teacher fine-tune ran first in the killed attempt, not in this one
    again = _trainer(tmp_path / "b", encoded, cfg, steps=5)
    assert again.train().resumed_from is None
    _assert_same_training(full, again)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_at_step_boundary_then_resumes(tmp_path, encoded, signum):
    cfg = _cfg()
    full = _trainer(tmp_path / "full", encoded, cfg)
    full.train()
    before = signal.getsignal(signum)

    def preempt(trainer, row):
        if trainer.step == 4:
            os.kill(os.getpid(), signum)
    t = _trainer(tmp_path / "p", encoded, cfg, on_step_end=preempt)
    with pytest.raises(Preempted, match="step 4.*run the same command again"):
        t.train()
    assert signal.getsignal(signum) == before   # handlers restored
    assert ckpt.list_checkpoints(t.ckpt_dir)[-1].name == "step_00000004"
    again = _trainer(tmp_path / "p", encoded, cfg)
    assert again.train().resumed_from == 4
    _assert_same_training(full, again)
    assert PREEMPTED_EXIT_CODE == 75


def test_sigterm_outside_training_stops_at_once_as_preempted():
    from adakd.training.signals import preemptible
    before = signal.getsignal(signal.SIGTERM)
    # what cli.py wraps around a run: e.g. a signal during evaluation
    with pytest.raises(Preempted, match="outside the training loop"), preemptible():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):   # the handler runs at the next bytecode boundary
            pass
    assert signal.getsignal(signal.SIGTERM) == before


def test_rng_of_each_rank_is_restored_on_that_rank(tmp_path, encoded):
    cfg = _cfg()
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(ckpt.capture_rng())
    t = _trainer(tmp_path, encoded, cfg, world_size=2, rank=1)
    st = t.state(rng_ranks=states)
    _scramble_rng()
    t.load_state(st)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])


# ---------------------------------------------------------------------------------------- non-finite
def _inject(monkeypatch, trainer_box, bad_steps, kind="nan", once=False):
    """Make the KD objective return a NaN loss (or a NaN gradient) at the given 1-based steps (`once`: a
    transient fault, gone when the step is tried again)."""
    from adakd.kd.objective import KDObjective
    real = KDObjective.__call__

    def call(self, s_logits, t_logits, labels, telemetry=False):
        loss, stats = real(self, s_logits, t_logits, labels, telemetry=telemetry)
        if trainer_box[0].step + 1 in bad_steps:
            if once:
                bad_steps.discard(trainer_box[0].step + 1)
            if kind == "nan":
                loss = loss * float("nan")
            else:   # finite value, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0 is NaN
                loss = loss + (s_logits.sum() * 0.0).sqrt()
        return loss, stats
    monkeypatch.setattr(KDObjective, "__call__", call)


def test_nan_loss_stops_with_diagnostic_and_keeps_last_good_checkpoint(tmp_path, encoded, monkeypatch):
    box = []
    t = _trainer(tmp_path, encoded, _cfg())
    box.append(t)
    _inject(monkeypatch, box, {5})
    with pytest.raises(NonFiniteLoss) as e:
        t.train()
    msg = str(e.value)
    for needle in ("non-finite loss=nan at step 5", "method=rkl", "divergence=rkl", "LATF ratio=",
                   "examples (dataset indices) of this step", "tokens with labels",
                   "student logits: all finite",
                   "teacher logits: all finite", "step_00000003", "train.nonfinite=skip"):
        assert needle in msg, needle
    assert [p.name for p in ckpt.list_checkpoints(t.ckpt_dir)] == ["step_00000003"]
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 4


def test_nan_weights_diagnostic_names_the_tokens(tmp_path, encoded):
    t = _trainer(tmp_path, encoded, _cfg(), steps=2)
    with torch.no_grad():
        t.student.transformer.wpe.weight[5].fill_(float("nan"))   # position 5 breaks, from there on
    with pytest.raises(NonFiniteLoss) as e:
        t.train()
    msg = str(e.value)
    assert "at step 1" in msg
    pattern = r"student logits: non-finite at \d+ of \d+ tokens: \(row \d+, pos \d+, token \d+\)"
    assert re.search(pattern, msg), msg


def test_nan_gradient_stops_naming_parameters(tmp_path, encoded, monkeypatch):
    box = []
    t = _trainer(tmp_path, encoded, _cfg(), steps=4)
    box.append(t)
    _inject(monkeypatch, box, {2}, kind="grad")
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient .*at step 2.*parameters with non-finite "
                                            r"gradients: [1-9]\d* \(transformer\."):
        t.train()


def test_skip_policy_skips_then_finishes(tmp_path, encoded, monkeypatch):
    box = []
    t = _trainer(tmp_path, encoded, _cfg(["train.nonfinite=skip", "train.max_nonfinite_skips=2"]), steps=6)
    box.append(t)
    _inject(monkeypatch, box, {3}, once=True)
    result = t.train()
    assert result.steps == 6 and result.skipped_steps == 1
    assert all(np.isfinite(p.detach().numpy()).all() for p in t.student.parameters())
    rows = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert t.position == 7 * 8   # the skipped step's examples were consumed, not retried


def test_skip_policy_has_a_limit(tmp_path, encoded, monkeypatch):
    box = []
    t = _trainer(tmp_path, encoded, _cfg(["train.nonfinite=skip", "train.max_nonfinite_skips=2"]), steps=6)
    box.append(t)
    _inject(monkeypatch, box, set(range(2, 100)))
    with pytest.raises(NonFiniteLoss, match="max_nonfinite_skips=2 is reached"):
        t.train()
    assert t.skipped == 2 and t.step == 1


# ----------------------------------------------------------------------------------------- bad input
def test_global_batch_must_divide_by_micro_batch_times_world_size(tmp_path, encoded):
    with pytest.raises(ValueError, match=r"not divisible by micro_batch x world_size = 4 x 3"):
        _trainer(tmp_path, encoded, _cfg(), world_size=3)


@pytest.mark.parametrize("override,needles", [
    (["adakd.metric=hellinga"], ["adakd.metric", "hellinger", "random"]),
    (["method.divergence=kl"], ["method.divergence", "fkl", "rkl"]),
    (["adakd.ratio_start=0"], ["adakd.ratio_start=0", "(0.0, 1.0]"]),
    (["adakd.ratio_end=1.01"], ["adakd.ratio_end"]),
    (["adakd.c=-0.5"], ["adakd.c=-0.5"]),
    (["train.global_batch=20", "train.micro_batch=8"], ["not divisible"]),
    (["model.student.source=pretrained", "model.student.path=/no/such/student"],
     ["model.student.path", "model directory not found: /no/such/student"]),
    (["model.tokenizer=./no/such/tokenizer"], ["model.tokenizer", "not found"]),
])
def test_bad_settings_fail_before_any_work(override, needles):
    from adakd.experiment.config_check import ConfigError, validate_config
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(["experiment=smoke", *override]))
    for n in needles:
        assert n in str(e.value), n


def test_unknown_model_key_lists_valid_ones():
    with pytest.raises(Exception) as e:
        compose_cfg(["model=tinyy"])
    assert "tinyy" in str(e.value) and "tiny" in str(e.value).replace("tinyy", "")


def _dolly_root(tmp_path: Path, broken_line: int | None = 3, n: int = 6) -> Path:
    from adakd.data.prompts import render_prompt
    d = tmp_path / "data" / "dolly"
    d.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = []
        for i in range(1, n + 1):
            rec = {"instruction": f"Say {i}.", "input": "", "output": f"{i}",
                   "prompt": render_prompt(f"Say {i}.")}
            lines.append(json.dumps(rec))
        if split == "train" and broken_line:
            lines[broken_line - 1] = lines[broken_line - 1][:-7]   # cut mid-record
        (d / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


def test_malformed_training_data_fails_before_tokenizer_or_models(tmp_path):
    import time

    from adakd.experiment import runner
    from adakd.data import DataError
    root = _dolly_root(tmp_path)
    out = tmp_path / "out"
    cfg = compose_cfg(["experiment=smoke", "dataset=dolly", f"dataset.root={root}", "eval=dolly-cpu",
                       "eval.benchmarks=[dolly]", "run.baselines=[]", f"run.output_root={out}", "logger=none",
                       "run.progress=false"])
    t0 = time.time()
    with pytest.raises(DataError) as e:
        runner.run(cfg)
    assert f"{root / 'dolly' / 'train.jsonl'}, line 3" in str(e.value) and "invalid JSON" in str(e.value)
    assert time.time() - t0 < 10
    assert not (out / "cache").exists()   # no tokenizer trained, no teacher built


def test_mismatched_tokenizers_refused_before_models_load(tmp_path):
    from adakd.experiment import runner
    from adakd.models import ModelLoadError, train_bpe_tokenizer
    from adakd.models.loading import model_from_arch
    a, b = tmp_path / "tok-a", tmp_path / "tok-b"
    train_bpe_tokenizer(["alpha beta gamma delta"] * 20, 280, a)
    train_bpe_tokenizer(["one two three four five"] * 20, 290, b)
    for d, vocab in ((a, 280), (b, 290)):   # complete model directories: refused for the tokenizers alone
        model_from_arch({"n_layer": 1, "n_embd": 8, "n_head": 2, "n_positions": 160}, vocab, 0, 0).save_pretrained(d)
    cfg = compose_cfg(["experiment=smoke", f"model.tokenizer={a}", "model.teacher.source=pretrained",
                       f"model.teacher.path={a}", "model.student.source=pretrained",
                       f"model.student.path={b}", "run.baselines=[]", f"run.output_root={tmp_path / 'out'}",
                       "logger=none", "run.progress=false"])
    with pytest.raises(ModelLoadError, match=r"model.student.path=.*tok-b.*different tokenizers"):
        runner.run(cfg)   # before any model loads


# -------------------------------------------------------------------------------------- safe loading
def test_no_unsafe_deserialisation_in_the_package():
    offenders = []
    for f in sorted((REPO / "src" / "adakd").rglob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{f.name}: torch.load without weights_only=True")
        imports = re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.MULTILINE)
        if imports or "pickle.load" in text:
            offenders.append(f"{f.name}: pickle")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{f.name}: trust_remote_code=True hard-coded")
        if "use_safetensors=False" in text or "safe_serialization=False" in text:
            offenders.append(f"{f.name}: safetensors turned off")
    assert not offenders, offenders


def test_weights_load_through_safetensors_and_remote_code_only_on_request(tmp_path, monkeypatch):
    import transformers

    from adakd.assemble.construct import build_model as _build
    from adakd.models.loading import model_from_arch
    seen = []
    tiny = model_from_arch({"n_layer": 1, "n_embd": 8, "n_head": 2, "n_positions": 16}, 300, 0, 0)
    tiny.save_pretrained(tmp_path)   # a complete directory (config.json, model.safetensors): it passes the checks
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: seen.append(kw) or tiny)
    for flag in ("false", "true"):
        cfg = compose_cfg(["model.student.source=pretrained", f"model.student.path={tmp_path}",
                           f"model.student.trust_remote_code={flag}"])
        _build(cfg.model.student, tiny_tokenizer())
    assert [kw["use_safetensors"] for kw in seen] == [True, True]
    assert [kw["trust_remote_code"] for kw in seen] == [False, True]


def test_saved_models_are_safetensors_and_checksummed(tmp_path):
    from adakd.models import ModelLoadError, save_model, verify_checksum
    save_model(_model(2), tiny_tokenizer(), tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" in names and not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    verify_checksum(tmp_path / "m")
    _flip_byte(tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        verify_checksum(tmp_path / "m")


def test_all_trainer_state_loads_with_weights_only(tmp_path, encoded):
    t = _trainer(tmp_path, encoded, _cfg(["adakd.temperature=ctkd", "adakd.idts=false"]), steps=3)
    t.train()
    st = torch.load(ckpt.list_checkpoints(t.ckpt_dir)[-1] / "trainer_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "objective", "rng", "rng_ranks", "position", "step"} <= set(st)
    assert st["objective"]["temperature"]["kind"] == "ctkd"


def _gather_worker(rank: int, world: int, init: str, q):
    import torch.distributed as dist

    from adakd.training.distributed import gather_rng as _gather_rng
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        torch.manual_seed(100 + rank)
        states = _gather_rng(world)
        ok = all(torch.equal(states[r]["torch"], _seeded_state(100 + r)) for r in range(world))
        dist.destroy_process_group()
        q.put((rank, ok, None))
    except Exception as e:   # noqa: BLE001
        q.put((rank, False, repr(e)))


def _seeded_state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return g.get_state()


def test_checkpoint_gathers_the_rng_of_every_rank(tmp_path):
    import multiprocessing as mp

    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, init, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results == [(0, True, None), (1, True, None)], results
