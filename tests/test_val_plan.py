"""The dev validation schedule planned from a budget (training.val_plan), the validator's prompts, the progress
bar's step time, and the budget wired into a run (experiment=smoke)."""
from __future__ import annotations

import json
import logging
import math
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from tqdm import tqdm

from adakd.training import val_plan
from adakd.training.loop import Trainer
from adakd.training.val_plan import MIN_EXAMPLES, MIN_SAMPLES, ValCosts, estimate_costs, plan
from adakd.training.validation import Validator, validation_steps

OPEN = dict(val_every=None, val_samples=None, val_examples=None)


def _plan(costs, *, total=100, per_epoch=None, budget=0.1, prompts=1000, sequences=1000, **settings):
    return plan(costs, total_steps=total, steps_per_epoch=per_epoch, dev_prompts=prompts, dev_sequences=sequences,
                budget=budget, **{**OPEN, **settings})


def _share(costs, p):
    return len(p.steps) * (p.samples * costs.per_sample + p.examples * costs.per_example) / costs.train


def test_costs_count_the_teacher_only_where_it_runs():
    kw = dict(total_steps=10, global_batch=4, train_len=100, dev_len=50, student_params=2, teacher_params=10,
              max_new_tokens=8)
    live = estimate_costs(teacher_in_training=True, teacher_in_validation=True, **kw)
    cached = estimate_costs(teacher_in_training=False, teacher_in_validation=False, **kw)
    assert live.train == 10 * 4 * 100 * (3 * 2 + 10) and cached.train == 10 * 4 * 100 * 3 * 2
    assert live.per_example == 50 * 12 and cached.per_example == 50 * 2
    assert live.per_sample == cached.per_sample == (50 + val_plan.DECODE_COST * 8) * 2


def test_a_cheap_validation_keeps_the_defaults():
    costs = ValCosts(train=1e6, per_example=1.0, per_sample=10.0)   # 6 x (500 + 1000) = 0.9 % of the training
    p = _plan(costs)
    assert p.steps == validation_steps(None, 100, None) == [0, 20, 40, 60, 80, 100]
    assert (p.samples, p.examples, p.trimmed, p.over_budget) == (50, 1000, False, False)
    assert p.share == pytest.approx(_share(costs, p))
    assert _plan(costs, per_epoch=50).steps == [0, 50, 100]   # epoch-based: once per epoch


def test_fewer_validations_first_then_fewer_dev_items_to_fit_the_budget():
    costs = ValCosts(train=1e5, per_example=1.0, per_sample=10.0)   # one full validation: 1,500 = 1.5 %
    p = _plan(costs)                                                # 6 of them: 9 % -> fits at 10 %
    assert len(p.steps) == 6 and not p.trimmed
    p = _plan(costs, budget=0.05)                                   # 5,000 allowed: 3 validations of 1,500
    assert p.steps == [0, 50, 100] and (p.samples, p.examples) == (50, 1000) and p.trimmed
    p = _plan(costs, budget=0.01)                                   # 1,000: two validations of <= 500 each
    assert p.steps == [0, 100] and p.samples == 16 and p.examples == 340   # 1/3 of each, the rest to sequences
    assert p.share <= 0.01 and not p.over_budget
    p = _plan(costs, budget=0.001)            # 50 each: fewer than MIN_SAMPLES prompts is none, CE / KD remain
    assert p.steps == [0, 100] and (p.samples, p.examples) == (0, 50) and not p.over_budget
    p = _plan(costs, budget=0.001, need_rouge=True)   # train.select=best_dev: the floor, over budget
    assert (p.samples, p.examples) == (MIN_SAMPLES, MIN_EXAMPLES) and p.over_budget


def test_settings_given_are_kept_and_a_schedule_over_budget_says_so():
    costs = ValCosts(train=1e5, per_example=1.0, per_sample=10.0)
    p = _plan(costs, budget=0.01, val_every=10)           # 11 validations kept; the dev items cut to fit
    assert p.steps == validation_steps(10, 100, None) and (p.samples, p.examples) == (0, 90)
    assert not p.over_budget and p.share == pytest.approx(_share(costs, p))
    p = _plan(costs, budget=0.01, val_every=10, val_samples=20)       # the prompts given: over budget, said
    assert (p.samples, p.examples) == (20, MIN_EXAMPLES) and p.over_budget
    p = _plan(costs, budget=0.01, val_samples=40, val_examples=500)   # count open: cut to two; items kept
    assert p.steps == [0, 100] and (p.samples, p.examples) == (40, 500) and p.over_budget
    p = _plan(costs, budget=0.01, val_samples=40)                     # only the sequences give way
    assert (p.samples, p.examples) == (40, 100) and not p.over_budget
    assert _plan(costs, val_every=0).steps == []


def test_no_budget_is_the_old_schedule_and_small_dev_splits_cap_the_items():
    costs = ValCosts(train=1.0, per_example=1.0, per_sample=10.0)
    p = _plan(costs, budget=None, prompts=30, sequences=20)
    assert len(p.steps) == 6 and (p.samples, p.examples) == (30, 20) and not p.over_budget


def test_a_budget_nothing_fits_in_ends_at_the_floors():
    costs = ValCosts(train=1.0, per_example=1.0, per_sample=10.0)
    p = _plan(costs)
    assert p.steps == [0, 100] and (p.samples, p.examples) == (0, MIN_EXAMPLES) and p.over_budget
    assert "2 times, no generations (no val_rougeL) and 16 dev sequences" in val_plan.describe(p, max_new_tokens=8)
    p = _plan(costs, need_rouge=True)
    assert (p.samples, p.examples) == (MIN_SAMPLES, MIN_EXAMPLES)
    assert "10 generations of up to 8 tokens and 16 dev sequences" in val_plan.describe(p, max_new_tokens=8)
    p = _plan(ValCosts(train=1.0, per_example=0.0, per_sample=10.0))   # free sequences: no division by zero
    assert (p.samples, p.examples) == (0, 1000) and not p.over_budget


@pytest.mark.parametrize("settings,needle", [
    ({"val_budget": math.nan}, "train.val_budget=nan must be a finite share > 0"),
    ({"val_budget": 0.0}, "train.val_budget=0.0 must be a finite share > 0"),
    ({"val_budget": math.inf}, "train.val_budget=inf"),
    ({"val_examples": 0}, "train.val_examples=0 is out of range [1, inf]"),
])
def test_bad_budget_settings(settings, needle):
    errors = val_plan.setting_errors(OmegaConf.create({"val_budget": 0.1, "val_examples": None, **settings}))
    assert len(errors) == 1 and needle in errors[0]
    assert val_plan.setting_errors(OmegaConf.create({"val_budget": None, "val_examples": 3})) == []


class _ChatTokenizer:
    pad_token_id = 0
    chat_template = "{{ user }}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return f"<user>{messages[0]['content']}</user><assistant>"


@pytest.mark.parametrize("chat", [False, True])
def test_validation_generates_from_the_prompts_evaluation_uses(chat, monkeypatch):
    """With eval.chat_template the dev prompts go through the chat template, without special tokens added, as
    evaluation's (it used to sample from the bare Alpaca prompt, which an instruction model runs on from)."""
    seen = {}

    def fake_generate(model, tokenizer, prompts, keys, **kw):
        seen.update(prompts=list(prompts), add_special_tokens=kw["add_special_tokens"])
        return ["the answer"] * len(prompts)
    from adakd.evaluation import evaluate as evaluation_module   # validation samples through sample_all_seeds
    monkeypatch.setattr(evaluation_module, "generate", fake_generate)
    examples = [SimpleNamespace(id=f"d{i}", prompt=f"question {i}", references=["the answer"]) for i in range(2)]
    g = dict(max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=0, batch_size=2,
             max_prompt_len=32, prompt_truncation="head", chat_template=chat)
    v = Validator(encoded=[], examples=examples, tokenizer=_ChatTokenizer(), teacher=None, divergence=None,
                  generation=g, seed=10)
    assert v.rouge(model := object()) == pytest.approx(100.0) and model is not None
    want = [f"<user>question {i}</user><assistant>" if chat else f"question {i}" for i in range(2)]
    assert seen == {"prompts": want, "add_special_tokens": not chat}


def test_the_progress_bar_step_time_leaves_validation_out(tmp_path):
    """tqdm's elapsed time (and so its s/step) counted the dev validations inside the steps they follow."""
    def slow_validator(trainer):
        time.sleep(0.5)
        return {"step": trainer.step, "split": "dev", "val_seconds": 0.5}
    stub = SimpleNamespace(validator=slow_validator, rank=0, val_seconds=0.0, log_path=tmp_path / "log.jsonl",
                           logger=SimpleNamespace(log=lambda *a, **k: None), select="last", step=0,
                           best_rougeL=None)
    bar = tqdm(total=10, disable=False, file=open(tmp_path / "bar.txt", "w"), mininterval=0)
    Trainer.validate(stub, bar)
    bar.update(1)
    assert bar.format_dict["elapsed"] < 0.4
    bar.close()


@pytest.mark.integration
def test_a_run_plans_its_validation_within_the_budget(tmp_path, caplog):
    """experiment=smoke with a tiny budget: two validations of MIN_EXAMPLES dev sequences and no generations, a
    one-line warning, the plan in run_info.json; the training rows are those without a budget (validation
    changes nothing in the training)."""
    from adakd.experiment import runner

    from .compose import compose_cfg
    base = ["experiment=smoke", "logger=none", "run.progress=false", "train.threads=1"]
    logs = {}
    for budget in ("1e-6", "null"):
        cfg = compose_cfg(base + [f"train.val_budget={budget}", f"run.output_root={tmp_path / budget}"])
        with caplog.at_level(logging.INFO, logger="adakd"):
            runner.run(cfg)
        run_dir = runner.run_dir_for(cfg)
        rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        logs[budget] = rows
        info = json.loads((run_dir / "run_info.json").read_text())["dev_validation_plan"]
        dev = [r for r in rows if r.get("split") == "dev"]
        assert [r["step"] for r in dev] == info["steps"]
    tight = [r for r in logs["1e-6"] if r.get("split") == "dev"]
    assert [r["step"] for r in tight] == [0, 12]
    assert {r["n_examples"] for r in tight} == {MIN_EXAMPLES} and not any("val_rougeL" in r for r in tight)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dev validation" in r.message]
    assert len(warnings) == 1 and "over budget" in warnings[0].message and "\n" not in warnings[0].message
    loose = [r for r in logs["null"] if r.get("split") == "dev"]
    assert [r["step"] for r in loose] == validation_steps(None, 12, None)
    assert {r["val_samples"] for r in loose} == {50} and loose[0]["n_examples"] > MIN_EXAMPLES
    assert [r for r in logs["1e-6"] if r.get("split") != "dev"] == [r for r in logs["null"] if r.get("split") != "dev"]
