"""Data recipes (adakd.recipes): GKD's on-policy batches are the student's own samples, DistiLLM's
replay buffer and probability schedule behave as specified, SeqKD's teacher responses are cached, and
each recipe's preset validates (and refuses the teacher cache where it must)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from adakd.data import collate_train, encode_example
from adakd.data.prompts import IGNORE_INDEX
from adakd.evaluation.generation import generate_from_ids
from adakd.training.recipes import (
    AdaptiveProbability,
    DistiLLMSource,
    GKDSource,
    ReplayBuffer,
    Sampling,
    SeqKDSource,
    check_recipe_params,
    recipe_params,
)
from adakd.training.recipes.common import split_batch
from adakd.training.recipes.distillm import fresh_fraction
from adakd.training.recipes.seqkd import stream_keys

from .compose import compose_cfg
from .helpers_tiny import tiny_gpt2, tiny_tokenizer

MAX_LEN = 96


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def student(tok):
    return tiny_gpt2(len(tok), seed=3, n_layer=1, n_embd=32, n_positions=128)


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny_gpt2(len(tok), seed=4, n_layer=2, n_embd=32, n_positions=128)


@pytest.fixture(scope="module")
def examples(tok):
    words = ["the dog runs", "name two colors", "what is red", "list three fruits", "explain the text",
             "give one answer", "why is the sky blue", "summarize the paragraph"]
    out = []
    for i, w in enumerate(words * 2):
        e = encode_example(tok, f"Question {i}: {w}?\nAnswer:", " the answer is " + w, max_prompt_len=48,
                           max_len=MAX_LEN)
        assert e is not None
        out.append(e)
    return out


def batch_of(examples, tok, lo=0, n=4):
    return collate_train(examples[lo:lo + n], tok.pad_token_id)


def fake_trainer(step=0, total=10, **kw):
    return SimpleNamespace(step=step, total_steps=total, device=torch.device("cpu"), logger=None,
                           _autocast=lambda *a: torch.autocast("cpu", enabled=False), **kw)


def check_is_sample(model, tok, out, prompts, keys, seed, sampling):
    """Every row of `out` is prompt + the model's sample from stream (seed, key) (+ EOS if it stopped)."""
    rows = split_batch(out)
    assert [p for p, _, _ in rows] == prompts
    budget = max(MAX_LEN - len(p) for p in prompts)
    if sampling.max_new_tokens is not None:
        budget = min(budget, sampling.max_new_tokens)
    again = generate_from_ids(model, tok, prompts, keys, seed=seed, max_new_tokens=budget,
                              temperature=sampling.temperature, batch_size=1, progress=False)
    for (prompt, ids, labels), toks in zip(rows, again):
        response = ids[len(prompt):]
        assert labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt):] == response
        stopped = len(toks) < budget
        expected = (toks + [tok.eos_token_id] if stopped else toks)[: MAX_LEN - len(prompt)]
        assert response == expected
    return again


# ---------------------------------------------------------------------------------------------- GKD
def test_gkd_on_policy_batches_are_the_students_samples(tok, student, examples):
    sampling = Sampling(max_new_tokens=20)
    src = GKDSource(student=student, tokenizer=tok, seed=10, lam=1.0, sampling=sampling, max_len=MAX_LEN)
    batch = batch_of(examples, tok)
    out = src(batch, fake_trainer())
    prompts = [p for p, _, _ in split_batch(batch)]
    assert len(src.last_keys) == 4 and src.last_keys[0] == "gkd:r0:c1:0"
    again = check_is_sample(student, tok, out, prompts, src.last_keys, 10, sampling)
    dataset_responses = [ids[len(p):] for p, ids, _ in split_batch(batch)]
    assert [ids[len(p):] for p, ids, _ in split_batch(out)] != dataset_responses
    assert all(len(t) <= 20 for t in again)
    # a second micro-batch uses new streams: different samples for the same prompts
    out2 = src(batch, fake_trainer())
    assert src.last_keys[0] == "gkd:r0:c2:0"
    assert out2["input_ids"].tolist() != out["input_ids"].tolist()


def test_gkd_lambda_decides_per_micro_batch_and_resumes_exactly(tok, student, examples):
    sampling = Sampling(max_new_tokens=4)
    batch = batch_of(examples, tok)
    src = GKDSource(student=student, tokenizer=tok, seed=10, lam=0.0, sampling=sampling, max_len=MAX_LEN)
    assert src(batch, fake_trainer()) is batch   # lambda 0: the dataset's batch, untouched

    def run(source, n):
        kinds = []
        for _ in range(n):
            out = source(batch, fake_trainer())
            kinds.append("data" if out is batch else tuple(map(tuple, out["input_ids"].tolist())))
        return kinds

    a = GKDSource(student=student, tokenizer=tok, seed=10, lam=0.5, sampling=sampling, max_len=MAX_LEN)
    first = run(a, 6)
    state = a.state_dict()
    rest = run(a, 10)
    n_policy = sum(k != "data" for k in first + rest)
    assert 3 <= n_policy <= 13   # about half of 16
    # the checkpointed state (as torch.save / weights_only load round-trips it) continues identically
    b = GKDSource(student=student, tokenizer=tok, seed=10, lam=0.5, sampling=sampling, max_len=MAX_LEN)
    b.load_state_dict(_roundtrip(state))
    assert run(b, 10) == rest
    # the same seed gives the same decisions from the start; another seed other ones
    c = GKDSource(student=student, tokenizer=tok, seed=10, lam=0.5, sampling=sampling, max_len=MAX_LEN)
    assert run(c, 6) == first


def _roundtrip(state, tmp=None):
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ----------------------------------------------------------------------------------------- DistiLLM
def test_probability_schedule_on_a_scripted_validation_sequence():
    s = AdaptiveProbability(init=0.0, step=0.1, rise=0.1)
    losses = [2.00, 1.95, 2.05, 2.10, 2.20, 2.29, 2.31, 1.00, 1.10, 2.50]
    rose = [s.update(x) for x in losses]
    # reference: 2.00 (first), rises at 2.10 (>= 2.00 + 0.1), then at 2.20 (>= 2.10 + 0.1), not at 2.29
    # (< 2.30), at 2.31; falls never move the reference, so 1.00 / 1.10 do not rise; 2.50 >= 2.31 + 0.1
    assert rose == [False, False, False, True, True, False, True, False, False, True]
    assert s.p == pytest.approx(0.4) and s.ref_loss == 2.50
    # "previous": the reference follows every evaluation
    prev = AdaptiveProbability(reference="previous")
    assert [prev.update(x) for x in losses] == [False, False, True, False, True, False, False, False, True, True]
    assert prev.p == pytest.approx(0.4)
    # capped at prob_max
    cap = AdaptiveProbability(init=0.95, step=0.1, rise=0.1)
    for x in (0.0, 0.2, 0.4, 0.6):
        cap.update(x)
    assert cap.p == 1.0
    # state round trip
    back = AdaptiveProbability()
    back.load_state_dict(_roundtrip(s.state_dict()))
    assert (back.p, back.ref_loss, back.history) == (s.p, s.ref_loss, s.history)


def test_replay_buffer_capacity_eviction_sampling_and_state():
    buf = ReplayBuffer(capacity=5)
    items = [{"input_ids": [i, i + 1, i + 2], "labels": [-100, i + 1, i + 2]} for i in range(8)]
    buf.add(items[:3])
    assert len(buf) == 3 and not buf.full
    buf.add(items[3:8])
    assert len(buf) == 5 and buf.full and buf.added == 8
    assert [x["input_ids"][0] for x in buf.items] == [3, 4, 5, 6, 7]   # FIFO: the oldest went first
    g = torch.Generator().manual_seed(0)
    draw = buf.sample(4, g)
    firsts = [x["input_ids"][0] for x in draw]
    assert len(set(firsts)) == 4 and set(firsts) <= {3, 4, 5, 6, 7}   # without replacement
    assert len(buf.sample(9, g)) == 5
    back = ReplayBuffer(capacity=5)
    back.load_state_dict(_roundtrip(buf.state_dict()))
    assert back.items == buf.items and back.added == 8
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=0)


def _distillm(tok, student, teacher, examples, **kw):
    defaults = {"student": student, "teacher": teacher, "tokenizer": tok, "seed": 10, "dev": examples[:4],
                "divergence": "srkl", "div_params": {"alpha": 0.1}, "schedule": AdaptiveProbability(),
                "capacity": 6, "val_every": 2, "sampling": Sampling(max_new_tokens=6), "max_len": MAX_LEN}
    defaults.update(kw)
    return DistiLLMSource(**defaults)


def test_distillm_follows_the_released_rule(tok, student, teacher, examples, monkeypatch):
    """p from scripted validation losses; fresh samples (the student's own) until the buffer is full, then
    fresh with p(1 - step/total) and replay with the rest of p; the dataset otherwise."""
    src = _distillm(tok, student, teacher, examples)
    scripted = iter([1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4])
    monkeypatch.setattr(src, "validation_loss", lambda trainer: next(scripted))
    batch = batch_of(examples, tok)
    shadow = torch.Generator()
    shadow.set_state(src.generator.get_state())   # replays the decisions' uniforms
    total = 12
    kinds = []
    for step in range(total):
        trainer = fake_trainer(step=step, total=total)
        p_before = src.prob
        full_before = src.buffer.full
        out = src(batch, trainer)
        u = float(torch.rand((), generator=shadow, dtype=torch.float64))
        p_fresh = p_before * (1 - step / total)
        expected = ("fresh" if (u < p_fresh or (u < p_before and not full_before)) else
                    "replay" if u < p_before else "data")
        assert src.last_kind == expected, (step, u, p_before)
        kinds.append(src.last_kind)
        if expected == "fresh":
            check_is_sample(student, tok, out, [p for p, _, _ in split_batch(batch)], src.last_keys, 10,
                            src.sampling)
        elif expected == "data":
            assert out is batch
        else:
            assert out["input_ids"].shape[0] == 4
        trainer.step = step + 1
        src.on_step_end(trainer, {})
    # validations: before step 1 (reference 1.0), then after steps 2, 4, ... : +0.1 at each rise of 0.2
    assert src.schedule.history == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
    assert src.prob == pytest.approx(0.6)
    assert {"fresh", "data"} <= set(kinds)
    assert len(src.buffer) <= 6


def test_distillm_state_round_trip_continues_identically(tok, student, teacher, examples, monkeypatch):
    batch = batch_of(examples, tok)

    def make():
        s = _distillm(tok, student, teacher, examples, schedule=AdaptiveProbability(init=0.7), capacity=5)
        monkeypatch.setattr(s, "validation_loss", lambda trainer: 1.0)
        return s

    def run(s, steps):
        outs = []
        for step in steps:
            out = s(batch, fake_trainer(step=step, total=10))
            outs.append((s.last_kind, out["input_ids"].tolist()))
        return outs

    a = make()
    run(a, range(4))
    state = _roundtrip(a.state_dict())
    items = [dict(x) for x in a.buffer.items]
    rest = run(a, range(4, 9))
    b = make()
    b.load_state_dict(state)
    assert b.buffer.items == items and b.prob == pytest.approx(0.7) and b.calls == 4
    assert run(b, range(4, 9)) == rest
    assert {k for k, _ in rest} & {"fresh", "replay"}


def test_distillm_validation_losses_kd_and_ce_as_released(tok, student, teacher, examples):
    """kd: the plain divergence, token-weighted; ce (the default): the mean of per-batch mean CEs, as the
    released code averages its dev loss (so batches of different token counts weigh the same)."""
    from adakd.kd.losses import per_token
    from adakd.training.forward import response_positions

    src = _distillm(tok, student, teacher, examples, dev=examples[:5], val_batch=2, val_loss="kd")
    got = src.validation_loss(fake_trainer())
    b = collate_train(examples[:5], tok.pad_token_id)
    _, mask = response_positions(b["labels"])
    with torch.no_grad():
        s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1][mask]
        t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1][mask]
    assert got == pytest.approx(float(per_token("srkl", s, t, alpha=0.1).mean()), rel=1e-5)
    ce = _distillm(tok, student, teacher, examples, dev=examples[:5], val_batch=2).validation_loss(fake_trainer())
    batch_means = []
    for lo in range(0, 5, 2):
        bb = collate_train(examples[:5][lo:lo + 2], tok.pad_token_id)
        targets, m = response_positions(bb["labels"])
        with torch.no_grad():
            logits = student(input_ids=bb["input_ids"], attention_mask=bb["attention_mask"]).logits[:, :-1][m]
        batch_means.append(float(torch.nn.functional.cross_entropy(logits, targets[m])))
    assert ce == pytest.approx(sum(batch_means) / len(batch_means), rel=1e-5)
    token_weighted = float(torch.nn.functional.cross_entropy(s, response_positions(b["labels"])[0][mask]))
    assert ce != pytest.approx(token_weighted, rel=1e-6)   # the two averages differ here


def test_fresh_fraction_schedules():
    assert fresh_fraction("decreasing", 0, 10) == 1.0 and fresh_fraction("decreasing", 5, 10) == 0.5
    assert fresh_fraction("increasing", 5, 10) == 0.5 and fresh_fraction("constant", 9, 10) == 0.5


# --------------------------------------------------------------------------------------------- SeqKD
def test_seqkd_generates_once_and_reuses_the_cache(tok, teacher, examples, tmp_path):
    sampling = Sampling(max_new_tokens=8, batch_size=5)
    kw = {"teacher": teacher, "tokenizer": tok, "cache_root": tmp_path, "teacher_key": "t1", "sampling": sampling,
          "seed": 0, "max_len": MAX_LEN, "progress": False}
    a = SeqKDSource(**kw)
    data = a.train_data(examples)
    assert a.generated_now and len(data) == len(examples)
    prompts = [e["input_ids"][: e["labels"].index(next(x for x in e["labels"] if x != -100))] for e in examples]
    assert [d["input_ids"][: len(p)] for d, p in zip(data, prompts)] == prompts
    again = generate_from_ids(teacher, tok, prompts, stream_keys(prompts), seed=0, max_new_tokens=8, progress=False)
    for d, p, toks in zip(data, prompts, again):
        resp = d["input_ids"][len(p):]
        assert resp[: len(toks)] == toks and d["labels"][len(p):] == resp
    b = SeqKDSource(**kw)
    assert b.train_data(examples) == data and not b.generated_now      # read from disk
    meta = json.loads((a.cache_dir / "meta.json").read_text())
    assert meta["n"] == len(examples)
    c = SeqKDSource(**{**kw, "seed": 1})
    c.train_data(examples)
    assert c.cache_dir != a.cache_dir   # generation settings are part of the key
    # duplicate prompts get distinct streams
    assert stream_keys([[1, 2], [1, 2], [3]])[:2] == [stream_keys([[1, 2]])[0], stream_keys([[1, 2]])[0][:-1] + "1"]


# -------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("overrides", [["method=gkd", "adakd=full"], ["method=gkd", "adakd=none"],
                                       ["method=distillm", "adakd=full"], ["method=distillm", "adakd=none"],
                                       ["method=distillm", "method.divergence=sfkl"], ["method=seqkd"],
                                       ["method=seqkd", "method.kd_ratio=1.0", "train.teacher_cache.enabled=true"]])
def test_recipe_presets_validate(overrides):
    from adakd.experiment.config_check import validate_config
    validate_config(compose_cfg(["experiment=smoke", *overrides]))


@pytest.mark.parametrize("recipe", ["gkd", "distillm"])
def test_teacher_cache_is_refused_for_on_policy_recipes(recipe):
    from adakd.experiment.config_check import ConfigError, validate_config
    with pytest.raises(ConfigError, match="sampled from the current student"):
        validate_config(compose_cfg(["experiment=smoke", f"method={recipe}", "train.teacher_cache.enabled=true"]))


def test_recipe_params_are_checked():
    assert recipe_params("gkd", {})["lambda"] == 0.5
    with pytest.raises(ValueError, match="unknown key"):
        recipe_params("gkd", {"lamda": 0.5})
    errs = check_recipe_params("distillm", {"val_loss": "mse", "replay_capacity": 0})
    assert any("val_loss" in e for e in errs) and any("replay_capacity" in e for e in errs)
    assert check_recipe_params("gkd", {"lambda": 1.5})


@pytest.mark.integration
def test_distillm_smoke_run_end_to_end(tmp_path):
    """The whole pipeline with DistiLLM, SGO on from the start and a small buffer: generated, replayed and
    dataset batches all occur, validation runs every 3 steps, the state is in the checkpoint."""
    from adakd.experiment import runner

    cfg = compose_cfg(["experiment=smoke", "method=distillm", f"run.output_root={tmp_path}", "run.progress=false",
                       "logger=none", "train.threads=1", "train.steps=6", "method.recipe_params.val_every=3",
                       "method.recipe_params.prob_init=0.8", "method.recipe_params.replay_capacity=12",
                       "method.recipe_params.max_new_tokens=12", "eval.max_samples=8", "dataset.n_train=64"])
    m = runner.run(cfg)
    run_dir = runner.run_dir_for(cfg)
    assert m["status"] == "ok" and m["run"]["steps"] == 6
    rows = [json.loads(x) for x in (run_dir / "recipe_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert "val_loss_init" in rows[0] and "val_loss" in rows[2] and "val_loss" in rows[5]
    assert sum(r["fresh_frac"] for r in rows) > 0
    ckpt = max((run_dir / "checkpoints").iterdir())
    st = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert st["batch_source"]["buffer"]["lengths"].numel() == rows[-1]["buffer"]
    assert st["batch_source"]["schedule"]["p"] == pytest.approx(rows[-1]["prob"])


def test_sft_baseline_of_a_recipe_row_is_the_plain_sft_run(monkeypatch):
    """Table 1's SFT row under method=gkd / distillm validates (no foreign recipe_params) and is the same run
    as under method=rkl."""
    from adakd.experiment.tasks import baseline_config, run_dir_for
    from adakd.experiment.config_check import validate_config

    seen = []
    for method in ("gkd", "distillm", "seqkd", "jsd", "rkl"):
        sub = baseline_config(compose_cfg(["experiment=smoke", f"method={method}"]), "sft")
        validate_config(sub)
        seen.append(run_dir_for(sub))
    assert len(set(seen)) == 1
