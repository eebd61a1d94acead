"""The sampler calibration check (adakd.evaluation.calibration): its arithmetic against a float64 reading, and its
verdict on the native sampler (exact at T = 1; a too cold or too hot sampler is caught). The vLLM engine gets the
same check in tests/test_vllm_engine.py."""
from __future__ import annotations

import math

import pytest
import torch

from adakd.evaluation.calibration import calibration, surprisal_gaps
from adakd.evaluation.generation import generate_from_ids


class _Bigram(torch.nn.Module):
    """A model whose next-token logits depend on the last token only: the expected values are easy to write out."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, **_):
        return type("Out", (), {"logits": self.table[input_ids]})()


def _reference_gap(table, prompt, answer, eos, cap, temperature):
    """Written out in float64 with math, one step at a time; the EOS ids merged into one outcome."""
    total, history = 0.0, list(prompt)
    drawn = list(answer) + ([min(eos)] if len(answer) < cap else [])
    for tok in drawn:
        logits = [float(x) / temperature for x in table[history[-1]]]
        z = math.log(sum(math.exp(x) for x in logits))
        p = [math.exp(x - z) for x in logits]
        p_stop = sum(p[i] for i in eos)
        entropy = -sum(q * math.log(q) for i, q in enumerate(p) if i not in eos) - p_stop * math.log(p_stop)
        surprisal = -math.log(p_stop) if tok in eos else -math.log(p[tok])
        total += surprisal - entropy
        history.append(tok)
    return total


def test_gaps_match_a_float64_reading_eos_merged_and_cut_answers():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    model = _Bigram(table.float())
    eos = {0, 6}
    prompts = [[3, 4], [2], [5, 1, 1]]
    answers = [[1, 2, 3], [4], []]
    caps = [3, 5, 4]            # the first answer filled its room (no stop scored), the others ended by a stop
    for t in (1.0, 0.7):
        got = surprisal_gaps(model, prompts, answers, eos_ids=eos, caps=caps, temperature=t, batch_size=2)
        want = [_reference_gap(table.float().double().tolist(), p, a, eos, c, t)
                for p, a, c in zip(prompts, answers, caps)]
        assert got == pytest.approx(want, abs=1e-5)
    assert calibration([1.0, 3.0])["mean"] == 2.0 and calibration([1.0, 3.0])["se"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        surprisal_gaps(model, prompts, [[1, 2, 3, 4], [4], []], eos_ids=eos, caps=caps)


@pytest.fixture(scope="module")
def world_teacher():
    from adakd.assemble.identity import model_path
    from adakd.models import load_pretrained, load_tokenizer
    path = model_path("builtin:world-teacher")
    return load_pretrained(path).eval(), load_tokenizer(path)


def world_prompts(tok, n=24):
    topics = ["the town", "the river", "a creature", "the bell", "the land", "a person", "the road", "the market",
              "the bridge", "the mountain", "the sleepers", "the harbour"]
    texts = [f"Below is an instruction that describes a task. Write a response that appropriately completes the "
             f"request.\n\n### Instruction:\n{verb} {t}.\n\n### Response:\n"
             for verb in ("Tell me about", "Describe") for t in topics][:n]
    return [tok(p)["input_ids"] for p in texts]


def sampled_z(model, tok, encoded, *, draw_temperature, seeds=range(10, 110, 10), max_new_tokens=32):
    from adakd.evaluation.vllm_engine import eos_ids_of
    keys = [f"c{i}" for i in range(len(encoded))]
    prompts, answers = [], []
    for seed in seeds:
        answers += generate_from_ids(model, tok, encoded, keys, seed=seed, max_new_tokens=max_new_tokens,
                                     temperature=draw_temperature, progress=False)
        prompts += encoded
    gaps = surprisal_gaps(model, prompts, answers, eos_ids=eos_ids_of(model, tok), caps=[max_new_tokens] * len(prompts))
    return calibration(gaps)


def test_the_native_sampler_draws_from_the_model_and_a_wrong_temperature_is_caught(world_teacher):
    model, tok = world_teacher
    encoded = world_prompts(tok)
    exact = sampled_z(model, tok, encoded, draw_temperature=1.0)
    assert exact["n"] == 240 and abs(exact["z"]) < 4, exact
    # the check has power: samples drawn at another temperature than the one scored are flagged
    assert sampled_z(model, tok, encoded, draw_temperature=0.7)["z"] < -4
    assert sampled_z(model, tok, encoded, draw_temperature=1.4)["z"] > 4


def _metrics(tmp_path, name, run_seeds, base_seeds, seeds=(10, 20, 30)):
    def rouge(per_bench):
        return {b: {"mean": sum(v) / len(v), "per_seed": v} for b, v in per_bench.items()}
    m = {"protocol": {"seeds": list(seeds)}, "run": {"name": "rkl-adakd-world"}, "rougeL": rouge(run_seeds),
         "baselines": {"teacher": {"rougeL": rouge(base_seeds)}}}
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(__import__("json").dumps(m))
    return d


def test_diagnose_engines_compares_seed_averaged_rows(tmp_path, capsys):
    from adakd.experiment.diagnose import engine_agreement, main
    a = _metrics(tmp_path, "a", {"x": [10.0, 12.0, 14.0], "y": [20.0, 20.0, 20.0]}, {"x": [30.0, 31.0, 32.0]})
    b = _metrics(tmp_path, "b", {"x": [13.0, 13.0, 16.0], "y": [22.0, 21.0, 23.0]}, {"x": [33.0, 33.0, 33.0]})
    rows = {r["row"]: r for r in engine_agreement(a, b)}
    run = rows["rkl-adakd-world"]                       # per-seed Avg: A 15, 16, 17; B 17.5, 17, 19.5
    assert run["a"] == pytest.approx(16.0) and run["sd_a"] == pytest.approx(1.0)
    assert run["b"] == pytest.approx(18.0) and run["diff"] == pytest.approx(2.0) and not run["within"]
    assert run["se"] == pytest.approx(math.sqrt(1.0 / 3 + 1.75 / 3))
    assert rows["teacher"]["diff"] == pytest.approx(2.0) and not rows["teacher"]["within"]
    assert main(["engines", str(a), str(b)]) == 0
    assert "| rkl-adakd-world | 16.00 ± 1.00 | 18.00 ± 1.32 | +2.00 |" in capsys.readouterr().out
    other = _metrics(tmp_path, "c", {"x": [1.0, 2.0]}, {"x": [1.0, 2.0]}, seeds=(10, 20))
    with pytest.raises(ValueError, match="other generation seeds"):
        engine_agreement(a, other)
