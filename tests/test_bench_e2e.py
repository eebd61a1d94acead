"""The end-to-end benchmark (adakd gkd vs TRL's DistillationTrainer): its summary arithmetic, the skips with
their reasons, and, at toy sizes in processes of their own, both sides on the same prompts."""
from __future__ import annotations

import json

import pytest

from adakd.bench import e2e, peer_cases

TINY = ["--steps", "2", "--batch", "2", "--max-new-tokens", "8"]


def test_summary_leaves_out_the_first_step_and_names_what_dominates():
    res = {"steps": [{"seconds": 9.0, "sampling_s": 9.0, "sampled_tokens": 1.0, "trained_tokens": 5.0, "loss": 0.5},
                     {"seconds": 1.0, "sampling_s": 0.75, "sampled_tokens": 30.0, "trained_tokens": 50.0, "loss": 0.4},
                     {"seconds": 3.0, "sampling_s": 2.25, "sampled_tokens": 10.0, "trained_tokens": 70.0, "loss": 0.3}],
           "peak_growth_mb": 10.0, "peak_rss_mb": 500.0, "sampler": "native"}
    s = e2e.summarise(res)
    assert s["seconds_per_step"] == 2.0 and s["steps_timed"] == 2
    assert s["sampled_tokens_per_s"] == 10.0 and s["trained_tokens_per_s"] == 30.0
    assert s["sampling_share"] == 0.75 and s["loss_first_last"] == [0.5, 0.3] and s["steps_sampled"] == 3
    assert e2e.dominant(s).startswith("sampling (75%")
    assert e2e.dominant({"sampling_share": 0.2}).startswith("training")


def test_missing_trl_and_vllm_are_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(e2e, "peer_missing", lambda peer: "trl not installed (test)")
    monkeypatch.setattr(e2e, "vllm_missing", lambda: "vLLM not installed (test)")
    a = e2e.parse_args(TINY)
    assert e2e.run_side(a, "trl") == {"status": "skipped", "reason": "trl not installed (test)"}
    assert e2e.run_side(a, "adakd_vllm") == {"status": "skipped", "reason": "vLLM not installed (test)"}


@pytest.mark.integration
def test_both_sides_distil_on_policy_from_the_same_prompts(monkeypatch):
    if peer_cases.peer_missing("trl") is None:
        sides = ("adakd", "trl")
    else:
        sides = ("adakd",)
    monkeypatch.setattr(e2e, "SIDES", sides)
    result = e2e.run_benchmark(e2e.parse_args(TINY))
    json.loads(json.dumps(result))
    for side in sides:
        r = result["sides"][side]
        assert r["status"] == "ok", r
        assert r["steps_timed"] == 1 and r["seconds_per_step"] > 0 and r["sampled_tokens_per_s"] > 0
        assert r["steps_sampled"] == 2  # every step trained on the student's own samples
        assert 0 < r["sampling_share"] < 1 and r["peak_rss_mb"] > 0 and r["dominated_by"]
    if "trl" in sides:
        assert result["sides"]["trl"]["prompt_ids_round_trip"] is True  # TRL re-tokenises the same prompts
        assert result["ratios"]["adakd_vs_trl"]["status"] == "ok"
    table = e2e.markdown(result)
    assert "| adakd gkd (lambda 1), native sampler |" in table


def test_the_prompts_are_the_trainers():
    """The prompts handed to TRL are those adakd's trainer draws, in its order."""
    a = e2e.parse_args(TINY)
    cfg = e2e._compose(e2e._overrides(a, "/tmp"))
    prompts = e2e.step_prompts(a, cfg)
    assert len(prompts) == a.steps * a.batch and all(prompts)
    from adakd.assemble.context import Context
    from adakd.assemble.data import encoded_train, run_data
    from adakd.assemble.tokenizer import get_tokenizer
    from adakd.training.schedule import EpochSampler

    ctx = Context()
    data = run_data(cfg.dataset, ctx)
    encoded = encoded_train(cfg.dataset, get_tokenizer(cfg, data, ctx, roles=("teacher", "student")), data, ctx)
    first = EpochSampler(len(encoded), int(cfg.train.seed)).take(0, a.batch)[0]
    n = len(prompts[0])
    assert encoded[first]["input_ids"][:n] == prompts[0] and encoded[first]["labels"][n] != -100
