"""The judge's pieces without a server: the verdict parser, the swap rule, the cache, the bootstrap, the
statistics, matching two runs' answers, and the settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adakd.errors import ConfigError, DataError, RunLocked, UserError
from adakd.judge.cache import JudgmentCache, request_key
from adakd.judge.cli import load_config
from adakd.judge.prompts import completion_prompt, load_template, messages, parse_verdict, request_body
from adakd.judge.runs import instruction_of, match, resolve
from adakd.judge.scoring import bootstrap_ci, combine, example_counts, score, summarise
from adakd.data.prompts import render_prompt

from .judge_helpers import write_run


# ------------------------------------------------------------------------------------------------ parser
@pytest.mark.parametrize("text,label", [
    ("Answer A is correct. [[A]]", "A"), ("[[ B ]]", "B"), ("tie\n[[C]]", "C"),
    ("[[A]] ... so my verdict is [[A]]", "A"),
    ("<think>maybe [[A]]? no.</think>\nFinal: [[B]]", "B"),        # marks inside thinking do not count
])
def test_parser_reads_one_consistent_verdict(text, label):
    assert parse_verdict(text).label == label


@pytest.mark.parametrize("text,problem", [
    ("Answer A is better.", "no verdict"), ("[A]", "no verdict"), ("", "no verdict"),
    ("[[A]] if A is better, [[B]] if B is better", "conflicting"),
    ("<think>I think [[A]] is right", "unfinished thinking"),
])
def test_parser_refuses_what_it_cannot_read(text, problem):
    v = parse_verdict(text)
    assert v.label is None and problem in v.problem


# --------------------------------------------------------------------------------------------- swap rule
@pytest.mark.parametrize("ab,ba,outcome,consistent", [
    ("A", "B", "win", True), ("B", "A", "loss", True), ("C", "C", "tie", True),
    ("A", "A", "tie", False),       # each order prefers the answer shown first: position bias, no outcome
    ("B", "B", "tie", False), ("A", "C", "tie", False), ("C", "B", "tie", False),
])
def test_swap_rule(ab, ba, outcome, consistent):
    o = combine(ab, ba)
    assert (o.outcome, o.consistent, o.failure) == (outcome, consistent, "")


def test_a_failed_order_is_a_failure_not_a_tie():
    assert combine(None, "A", ("parse", "")).outcome is None
    assert combine(None, "A", ("parse", "")).failure == "parse"
    assert combine("A", None, ("", "api")).failure == "api"
    assert combine(None, None, ("parse", "api")).failure == "api"


def _row(bench, ex, outcome, consistent=True, failure="", verdicts=("A", "B"), kinds=("", "")):
    return {"benchmark": bench, "id": ex, "seed": 10, "outcome": outcome, "consistent": consistent,
            "failure": failure, "verdicts": dict(zip(("ab", "ba"), verdicts)),
            "request_failures": dict(zip(("ab", "ba"), kinds)), "tokens": {"prompt": 3, "completion": 2}}


def test_summary_counts_failures_apart():
    rows = [_row("b", "1", "win"), _row("b", "2", "tie", False, verdicts=("A", "A")),
            _row("b", "3", None, None, "parse", verdicts=(None, "B"), kinds=("parse", "")),
            _row("b", "4", None, None, "api", verdicts=(None, None), kinds=("api", "api"))]
    s = summarise(rows)
    assert (s.pairs, s.judged) == (4, 2)
    assert s.counts == {"win": 1, "tie": 1, "loss": 0}
    assert s.failed_pairs == {"api": 1, "parse": 1} and s.failed_requests == {"api": 2, "parse": 1}
    assert s.rate("win") == 0.5 and s.consistency == 0.5
    assert (s.first_position, s.decisive) == (3, 5)     # A, A, A named first; B, B, B not (row 3 has one B)
    assert s.prompt_tokens == 12


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_covers_the_rate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400):
        outcomes = rng.choice(3, size=n, p=[0.5, 0.2, 0.3])
        counts = np.eye(3, dtype=np.int64)[outcomes]
        ci = bootstrap_ci(["b"] * n, counts, 2000, 0, 0.95)
        rate = counts[:, 0].mean()
        assert ci["win"][0] < rate < ci["win"][1]
        widths.append(ci["win"][1] - ci["win"][0])
    assert widths[1] < widths[0] / 2     # ~ 1/sqrt(n)


def test_bootstrap_resamples_examples_not_pairs_and_is_seeded():
    # two seeds per example always agree: resampling examples (clusters) gives a wider interval than
    # treating the 2n pairs as independent
    per_example = np.array([[2, 0, 0]] * 30 + [[0, 0, 2]] * 30)
    per_pair = np.array([[1, 0, 0]] * 60 + [[0, 0, 1]] * 60)
    w_ex = np.diff(bootstrap_ci(["b"] * 60, per_example, 3000, 0, 0.95)["win"])[0]
    w_pair = np.diff(bootstrap_ci(["b"] * 120, per_pair, 3000, 0, 0.95)["win"])[0]
    assert w_ex > 1.2 * w_pair
    assert bootstrap_ci(["b"] * 60, per_example, 500, 7, 0.9) == bootstrap_ci(["b"] * 60, per_example, 500, 7, 0.9)
    assert bootstrap_ci(["b"] * 3, np.zeros((3, 3), dtype=np.int64), 100, 0, 0.95) == {}


def test_overall_bootstrap_is_stratified_by_benchmark():
    # b1 all wins, b2 all losses: every stratified resample keeps both halves, so the interval is a point
    rows = [_row("b1", str(i), "win") for i in range(20)] + [_row("b2", str(i), "loss") for i in range(20)]
    scores = score(rows, 500, 0, 0.95)
    assert scores["overall"].ci["win"] == (0.5, 0.5)
    assert scores["b1"].ci["win"] == (1.0, 1.0)
    strata, counts = example_counts(rows)
    assert strata.count("b1") == 20 and counts.shape == (40, 3)


# -------------------------------------------------------------------------------------------------- cache
def test_cache_keys_depend_on_everything_that_decides_the_answer():
    s = {"model": "m", "template": "t", "temperature": 0.2}
    base = request_key(s, "i", "r", "x", "y")
    assert base == request_key(dict(s), "i", "r", "x", "y")
    assert len({base, request_key({**s, "model": "n"}, "i", "r", "x", "y"),
                request_key({**s, "template": "u"}, "i", "r", "x", "y"),
                request_key({**s, "temperature": 0.0}, "i", "r", "x", "y"),
                request_key(s, "i", "r", "y", "x"), request_key(s, "j", "r", "x", "y")}) == 6


def test_cache_survives_a_cut_line_and_refuses_a_second_holder(tmp_path):
    path = tmp_path / "c" / "judge.jsonl"
    with JudgmentCache(path) as c:
        c.put({"key": "k1", "text": "[[A]]"})
        c.put({"key": "k2", "text": "[[B]]"})
        with pytest.raises(RunLocked):
            JudgmentCache(path).__enter__()
    with open(path, "a") as f:
        f.write('{"key": "k3", "te')            # a kill in mid-write
    with JudgmentCache(path) as c:
        assert len(c) == 2 and c.get("k2")["text"] == "[[B]]" and c.get("k3") is None
        assert c.dropped_bytes > 0
        c.put({"key": "k3", "text": "[[C]]"})
    with JudgmentCache(path) as c:
        assert [c.get(k)["text"] for k in ("k1", "k2", "k3")] == ["[[A]]", "[[B]]", "[[C]]"]
        assert c.dropped_bytes == 0


# ------------------------------------------------------------------------------------------------ prompts
def test_template_fills_the_protocol_fields_and_renders_chatml():
    t = load_template("pairwise-reference")
    msgs = messages(t, "INSTR", "REF", "FIRST", "SECOND")
    user = msgs[-1]["content"]
    assert user.index("INSTR") < user.index("REF") < user.index("FIRST") < user.index("SECOND")
    assert all(m in user for m in ("[[A]]", "[[B]]", "[[C]]"))
    assert "REF" not in messages(load_template("pairwise"), "INSTR", "REF", "FIRST", "SECOND")[-1]["content"]
    prompt = completion_prompt(msgs, "chatml")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert request_body("completions", msgs, "chatml")["stop"] == ["<|im_end|>"]
    assert request_body("chat", msgs, "chatml") == {"messages": msgs}
    assert t.digest != load_template("pairwise").digest


def test_custom_template_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("system: be fair\nuser: 'Q {instruction} A {answer_a} B {answer_b} R {reference}'\n")
    assert messages(load_template(str(f)), "i", "r", "a", "b")[-1]["content"] == "Q i A a B b R r"
    f.write_text("user: 'Q {question}'\n")
    with pytest.raises(ConfigError, match="only the fields"):
        load_template(str(f))
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_template("nosuch")


# --------------------------------------------------------------------------------------------- matching
def test_instruction_is_taken_out_of_the_alpaca_prompt():
    assert instruction_of(render_prompt("Do X.")) == "Do X."
    assert instruction_of(render_prompt("Do X.", "with Y")) == "Do X.\n\nwith Y"
    assert instruction_of("free text prompt") == "free text prompt"


def test_match_pairs_by_benchmark_example_and_seed(tmp_path):
    sft = write_run(tmp_path, "sft", {"b1": ["s0", "s1", "s2"], "b2": ["t0"]}, task="sft")
    a = write_run(tmp_path, "a", {"b1": [lambda s: f"a0-{s}", "a1", "a2"], "b2": ["u0"]}, baselines={"sft": sft})
    side_a = resolve(str(a))
    side_b = resolve("sft", other=side_a)
    assert (side_a.label, side_b.label) == ("student rkl + adakd", "student SFT")
    pairs = match(side_a, side_b, max_examples=2)
    assert [(p.benchmark, p.id, p.seed) for p in pairs] == [
        ("b1", "b1:0", 10), ("b1", "b1:0", 20), ("b1", "b1:1", 10), ("b1", "b1:1", 20), ("b2", "b2:0", 10),
        ("b2", "b2:0", 20)]
    assert (pairs[1].answer_a, pairs[1].answer_b, pairs[1].reference) == ("a0-20", "s0", "reference 0")
    assert pairs[0].instruction == "question 0 of b1"
    assert len(match(side_a, side_b, benchmarks=["b2"], seeds=[20])) == 1


def test_runs_that_are_not_comparable_are_refused(tmp_path):
    a = resolve(str(write_run(tmp_path, "a", {"b1": ["x"]})))
    with pytest.raises(ConfigError, match="different generation seeds"):
        match(a, resolve(str(write_run(tmp_path, "s", {"b1": ["y"]}, seeds=(10, 30)))))
    with pytest.raises(DataError, match="different files"):
        match(a, resolve(str(write_run(tmp_path, "f", {"b1": ["y"]}, sha="other"))))
    with pytest.raises(ConfigError, match="not evaluated on"):
        match(a, resolve(str(write_run(tmp_path, "o", {"b2": ["y"]}))))
    short = write_run(tmp_path, "short", {"b1": ["y"]})
    longer = resolve(str(write_run(tmp_path, "long", {"b1": ["x", "x"]})))
    with pytest.raises(DataError, match="no prediction"):
        match(longer, resolve(str(short)))
    with pytest.raises(UserError, match="no baseline row 'sft'"):
        resolve("sft", other=a)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(UserError, match="no finished run"):
        resolve(str(tmp_path / "unfinished"))


def test_changed_prompt_is_refused(tmp_path):
    a = write_run(tmp_path, "a", {"b1": ["x"]})
    b = write_run(tmp_path, "b", {"b1": ["y"]})
    path = b / "predictions" / "b1.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["references"] = ["another"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="prompts or references differ"):
        match(resolve(str(a)), resolve(str(b)))


# ---------------------------------------------------------------------------------------------- settings
def test_settings_are_checked(tmp_path):
    cfg = load_config(None, ["base_url=http://127.0.0.1:1/v1", "model=m", "max_examples=5"])
    assert cfg.max_examples == 5 and cfg.temperature == 0.2 and cfg.concurrency == 16
    f = tmp_path / "j.yaml"
    f.write_text("model_path: /models/x\nserver:\n  dtype: float32\n")
    assert load_config(str(f), ["server.max_model_len=2048"]).server.max_model_len == 2048
    for bad, msg in [(["base_url=http://x/v1", "model=m", "temprature=1"], "temprature"),
                     (["base_url=http://x/v1", "model=m", "concurrency=lots"], "concurrency"),
                     (["base_url=http://x/v1", "model_path=/m"], "exactly one"),
                     ([], "exactly one"), (["base_url=http://x/v1"], "model="),
                     (["base_url=ftp://x", "model=m"], "http"),
                     (["base_url=http://x/v1", "model=m", "api=edits"], "api="),
                     (["base_url=http://x/v1", "model=m", "concurrency=0"], "concurrency")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, bad)
