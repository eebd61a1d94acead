"""ROUGE-L on known pairs, and evaluate_model's metrics, predictions files and protocol record."""
from __future__ import annotations

import json

import pytest

from adakd.data import load_benchmark
from adakd.evaluation import evaluate_model, rouge_l, rouge_l_scores
from adakd.schema.evaluation import EvalConfig

from .helpers_tiny import tiny_gpt2, tiny_tokenizer

DOLLY_TEST_SHA256 = "f2624572fdde0bec8759e63fecefdc5e38679816464cd57ef563612ccc6acc06"


def test_rouge_identical_and_disjoint():
    assert rouge_l(["The cat sat on the mat."], ["The cat sat on the mat."]) == pytest.approx(100.0)
    assert rouge_l(["dogs bark loudly"], ["cats purr softly"]) == 0.0
    assert rouge_l([""], ["anything"]) == 0.0


def test_rouge_known_value_and_tokenisation():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides -> F = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(500 / 6)
    # case and punctuation are not tokens
    assert rouge_l(["THE CAT, SAT!"], ["the cat sat"]) == pytest.approx(100.0)


def test_rouge_uses_the_stemmer():
    assert rouge_l(["the dog runs"], ["the dog running"]) == pytest.approx(100.0)
    assert rouge_l(["run"], ["runs"]) == pytest.approx(100.0)


def test_rouge_max_over_references_then_mean():
    preds = ["the cat sat", "a red apple"]
    refs = [["completely different words", "the cat sat"], ["green pear"]]
    assert rouge_l_scores(preds, refs) == [pytest.approx(100.0), 0.0]
    assert rouge_l(preds, refs) == pytest.approx(50.0)
    # plain strings and one-element lists are the same thing
    assert rouge_l(["the cat sat"], ["the cat sat"]) == rouge_l(["the cat sat"], [["the cat sat"]])


def test_rouge_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no reference"):
        rouge_l(["a"], [[]])
    with pytest.raises(ValueError, match="no predictions"):
        rouge_l([], [])


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_gpt2(len(tok), seed=3, n_positions=128), tok


@pytest.fixture(scope="module")
def benches(data_root):
    return {name: load_benchmark(name, data_root) for name in ("dolly", "sinst", "vicuna")}


def _cfg(**over):
    base = {"benchmarks": ["dolly", "sinst"], "seeds": [10, 20], "max_new_tokens": 8, "batch_size": 4,
                "max_samples": 6, "max_prompt_len": 48}
    base.update(over)
    return EvalConfig(**base)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_metrics_predictions_and_protocol(tiny, benches, tmp_path):
    model, tok = tiny
    info = {"name": "tiny-gpt2", "source": "random init",
            "params": sum(p.numel() for p in model.parameters())}
    res = evaluate_model(model, tok, benches, _cfg(), tmp_path / "a", model_info=info, progress=False)

    assert set(res["rougeL"]) == {"dolly", "sinst"}                 # eval.benchmarks chooses
    for bench, r in res["rougeL"].items():
        assert r["n"] == 6 and len(r["per_seed"]) == 2
        a, b = r["per_seed"]
        assert r["mean"] == pytest.approx((a + b) / 2)
        assert r["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)      # sample std, ddof=1
        rows = _read(tmp_path / "a" / "predictions" / f"{bench}.jsonl")
        assert len(rows) == 12 and {r_["seed"] for r_ in rows} == {10, 20}
        assert set(rows[0]) == {"id", "seed", "prompt", "prediction", "references", "rougeL"}
        first6 = [ex.id for ex in benches[bench][:6]]                  # max_samples = first N
        assert [r_["id"] for r_ in rows if r_["seed"] == 10] == first6
        seed10 = [r_["rougeL"] for r_ in rows if r_["seed"] == 10]
        assert sum(seed10) / 6 == pytest.approx(a)
    assert any(len(r_["references"]) > 1 for r_ in _read(tmp_path / "a" / "predictions" / "sinst.jsonl"))
    assert res["avg"] == pytest.approx((res["rougeL"]["dolly"]["mean"] + res["rougeL"]["sinst"]["mean"]) / 2)

    proto = res["protocol"]
    gen = proto["generation"]
    assert (gen["decoding"], gen["top_k"], gen["top_p"], gen["temperature"]) == ("sampling", 0, 1.0, 1.0)
    assert gen["max_new_tokens"] == 8 and gen["no_repeat_ngram_size"] == 0
    assert proto["seeds"] == [10, 20]
    assert "### Instruction:\n{instruction}" in proto["prompt"]["no_input"]
    assert "### Input:\n{input}" in proto["prompt"]["with_input"]
    assert proto["prompt"]["max_prompt_len"] == 48 and proto["prompt"]["chat_template"] is False
    assert "use_stemmer=True" in proto["score"]["metric"] and "ddof=1" in proto["score"]["std"]
    assert proto["subset"]["max_samples"] == 6 and proto["benchmarks"] == {"dolly": 6, "sinst": 6}
    assert proto["model"] == info
    (dolly_file,) = proto["data_files"]["dolly"]
    assert dolly_file["sha256"] == DOLLY_TEST_SHA256 and dolly_file["n"] == 500
    assert proto["versions"]["rouge-score"] and proto["versions"]["transformers"]
    json.dumps(res)   # the whole record is JSON-ready for metrics.json

    # the acceptance check: a run differing only in eval batch size gives identical predictions
    res1 = evaluate_model(model, tok, benches, _cfg(batch_size=1), tmp_path / "b", model_info=info,
                          progress=False)
    for bench in ("dolly", "sinst"):
        assert _read(tmp_path / "a" / "predictions" / f"{bench}.jsonl") == \
            _read(tmp_path / "b" / "predictions" / f"{bench}.jsonl")
        assert res1["rougeL"][bench] == res["rougeL"][bench]


def test_single_seed_has_zero_std_and_selection_errors(tiny, benches, tmp_path):
    model, tok = tiny
    res = evaluate_model(model, tok, benches, _cfg(benchmarks=["vicuna"], seeds=[10], max_samples=3),
                         tmp_path, progress=False, data_files={"vicuna": "given"})
    assert res["rougeL"]["vicuna"]["std"] == 0.0 and res["rougeL"]["vicuna"]["n"] == 3
    assert res["avg"] == res["rougeL"]["vicuna"]["mean"]
    assert res["protocol"]["data_files"] == {"vicuna": "given"}
    with pytest.raises(KeyError, match="uinst"):
        evaluate_model(model, tok, benches, _cfg(benchmarks=["uinst"]), tmp_path, progress=False)
