"""Generation through vLLM (eval.engine=vllm, recipe sampling): request building, seeds, config refusals and the
refresh cadence here, without vLLM; the engine itself in the `vllm` tests below (run by `make test-vllm` in
.venv-vllm, skipped with the reason where vLLM is not installed)."""
from __future__ import annotations

import json
import random

import pytest
import torch

from adakd.assemble.identity import semantic_config
from adakd.errors import ConfigError
from adakd.evaluation import vllm_engine
from adakd.evaluation.evaluate import protocol_record
from adakd.evaluation.generation import example_seed, generate_from_ids
from adakd.evaluation.vllm_engine import build_requests, engine_errors
from adakd.experiment.config_check import validate_config
from adakd.schema.evaluation import EvalConfig
from adakd.training.recipes.common import PolicyEngine, Sampling, sample_responses
from omegaconf import OmegaConf

from .compose import compose_cfg

needs_vllm = pytest.mark.skipif(not vllm_engine.vllm_available(),
                                reason="vLLM is not installed here (make install-vllm; make test-vllm runs these)")


# -- requests and seeds ------------------------------------------------------------------------------------
def test_requests_carry_the_native_stream_seed_and_room():
    reqs = build_requests([[1, 2, 3], [4] * 10], ["a", "b"], seed=20, max_new_tokens=8, limit=14)
    assert [r.seed for r in reqs] == [example_seed(20, "a"), example_seed(20, "b")]
    assert [r.max_tokens for r in reqs] == [8, 4]          # b: 14 positions - 10 prompt tokens
    assert [r.prompt for r in reqs] == [[1, 2, 3], [4] * 10]
    assert build_requests([[1]], ["a"], seed=10, max_new_tokens=8, limit=None)[0].max_tokens == 8
    assert reqs[0].seed != build_requests([[1]], ["a"], seed=30, max_new_tokens=8, limit=None)[0].seed


def test_requests_refuse_a_prompt_without_room_and_mismatched_keys():
    with pytest.raises(ValueError, match="no room"):
        build_requests([[1] * 14], ["a"], seed=10, max_new_tokens=8, limit=14)
    with pytest.raises(ValueError, match="keys"):
        build_requests([[1], [2]], ["a"], seed=10, max_new_tokens=8, limit=None)


# -- config ------------------------------------------------------------------------------------------------
def test_engine_errors():
    ev = OmegaConf.structured(EvalConfig)
    assert engine_errors(ev) == []
    ev.engine = "vllm"
    ev.no_repeat_ngram_size = 6
    msgs = " ".join(engine_errors(ev))
    assert "no_repeat_ngram_size" in msgs
    bad = OmegaConf.merge(ev, {"engine": "sglang"})
    assert "not valid" in engine_errors(bad)[0]


def test_vllm_missing_is_refused_before_any_work_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    cfg = compose_cfg(["experiment=smoke", "eval.engine=vllm", f"run.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="make install-vllm"):
        validate_config(cfg)
    cfg = compose_cfg(["experiment=smoke", "method=gkd", "++method.recipe_params.engine=vllm",
                       f"run.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="method.recipe=gkd samples with vLLM"):
        validate_config(cfg)
    assert not any(tmp_path.iterdir())


def test_recipe_engine_choice_and_refresh_are_checked():
    cfg = compose_cfg(["experiment=smoke", "method=gkd", "++method.recipe_params.engine=sglang",
                       "++method.recipe_params.refresh_every=0"])
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert "recipe_params.engine='sglang'" in str(e.value) and "refresh_every=0" in str(e.value)


def test_native_engine_keeps_the_run_identity_and_vllm_changes_it():
    native = semantic_config(compose_cfg(["experiment=smoke"]))
    assert "engine" not in native["eval"] and "vllm" not in native["eval"]
    vllm = semantic_config(compose_cfg(["experiment=smoke", "eval.engine=vllm"]))
    assert vllm["eval"]["engine"] == "vllm" and vllm["eval"]["vllm"]["dtype"] == "auto"
    # how the engine schedules is not what it computes
    assert "requests_per_call" not in vllm["eval"]["vllm"] and "max_num_seqs" not in vllm["eval"]["vllm"]


def test_native_sampling_keeps_the_recipe_runs_identity():
    for method in ("gkd", "distillm", "seqkd"):
        rp = semantic_config(compose_cfg(["experiment=smoke", f"method={method}"]))["method"]["recipe_params"]
        assert "engine" not in rp and "refresh_every" not in rp
    rp = semantic_config(compose_cfg(["experiment=smoke", "method=gkd", "eval.engine=vllm"]))["method"]["recipe_params"]
    assert rp["engine"] is None and rp["refresh_every"] == 1     # follows eval.engine=vllm: part of the identity
    rp = semantic_config(compose_cfg(["experiment=smoke", "method=gkd", "eval.engine=vllm",
                                      "++method.recipe_params.engine=native"]))["method"]["recipe_params"]
    assert "engine" not in rp


def test_protocol_records_the_engine():
    ev = OmegaConf.structured(EvalConfig)
    assert protocol_record(ev)["generation"]["engine"] == "native"
    ev.engine = "vllm"
    gen = protocol_record(ev)["generation"]
    assert gen["engine"] == "vllm" and gen["vllm"]["dtype"] == "auto" and "batch_size" not in gen


# -- the recipes' side, with a recording engine (what is asked of an engine, and what is made of its answer) ---
class RecordingEngine:
    def __init__(self, answers):
        self.answers, self.requests, self.loads = answers, [], 0

    def generate(self, requests, *, temperature, top_k=0, top_p=1.0, pbar=None):
        self.requests.append((list(requests), temperature, top_k, top_p))
        return [list(self.answers[i]) for i in range(len(requests))]

    def load_weights(self, named):
        self.loads += 1
        self.weights = dict(named)


class Tok:
    eos_token_id = 0


def test_sample_responses_through_an_engine_asks_what_the_native_sampler_would():
    model = torch.nn.Linear(1, 1)
    model.config = type("C", (), {"max_position_embeddings": 20})()
    engine = RecordingEngine([[5, 6], [7, 8, 9, 9]])
    out = sample_responses(model, Tok(), [[1, 2, 3], [4, 4, 4, 4, 4]], ["k0", "k1"], seed=10,
                           sampling=Sampling(temperature=0.7, top_k=3, top_p=0.9, max_new_tokens=4), max_len=12,
                           engine=engine)
    reqs, temperature, top_k, top_p = engine.requests[0]
    assert (temperature, top_k, top_p) == (0.7, 3, 0.9)
    assert [r.seed for r in reqs] == [example_seed(10, "k0"), example_seed(10, "k1")]
    assert [r.max_tokens for r in reqs] == [4, 4]
    # stopped early: EOS appended; a full-length answer has none (cut, as the native sampler's)
    assert out == [[5, 6, 0], [7, 8, 9, 9]]


def test_policy_engine_refreshes_before_the_first_call_then_every_k():
    engine = RecordingEngine([])
    opened = []
    policy = PolicyEngine(lambda: opened.append(1) or engine, refresh_every=3)
    assert not opened                       # started at its first use only
    model = torch.nn.Linear(2, 2)
    loads = []
    for _ in range(7):
        policy.for_model(model)
        loads.append(engine.loads)
    assert opened == [1] and loads == [1, 1, 1, 2, 2, 2, 3]
    assert set(engine.weights) == {"weight", "bias"}
    with pytest.raises(ValueError):
        PolicyEngine(lambda: engine, refresh_every=0)


# -- the engine itself (vLLM) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_teacher():
    from adakd.assemble.identity import model_path
    from adakd.models import load_pretrained, load_tokenizer
    path = model_path("builtin:world-teacher")
    return path, load_pretrained(path).eval(), load_tokenizer(path)


@pytest.fixture(scope="module")
def engine(world_teacher):
    path, model, tok = world_teacher
    eng = vllm_engine.VLLMEngine(path, eos_ids=vllm_engine.eos_ids_of(model, tok), max_model_len=256)
    yield eng
    eng.close()


PROMPTS = ["Below is an instruction that describes a task. Write a response that appropriately completes the "
           f"request.\n\n### Instruction:\nTell me about {w}.\n\n### Response:\n"
           for w in ["the town", "the river", "a creature", "the bell", "the land", "a person", "the road",
                     "the old artifact", "the market", "the bridge", "the mountain", "the sleepers"]]


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_vllm_text_depends_on_nothing_but_the_request(engine, world_teacher):
    _, _, tok = world_teacher
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    keys = [f"k{i}" for i in range(len(PROMPTS))]
    requests = [r for seed in (10, 20) for r in build_requests(encoded, keys, seed=seed, max_new_tokens=24,
                                                                limit=256)]
    engine.requests_per_call = None
    together = engine.generate(requests, temperature=1.0)
    engine.requests_per_call = 1
    one_by_one = engine.generate(requests, temperature=1.0)
    engine.requests_per_call = 32
    order = list(range(len(requests)))
    random.Random(0).shuffle(order)
    shuffled = engine.generate([requests[i] for i in order], temperature=1.0)
    engine.requests_per_call = None
    assert one_by_one == together
    assert [shuffled[order.index(i)] for i in range(len(requests))] == together
    assert together[:len(PROMPTS)] != together[len(PROMPTS):]     # another seed, other samples
    assert sum(map(len, together)) > 0 and engine.stats.requests == 3 * len(requests)


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_many_seeded_requests_at_once(engine, world_teacher):
    """More prompt tokens at once than one prefill step takes (the CPU build's seeded sampling broke on chunked
    prefill): every request is answered, each as it is alone."""
    _, _, tok = world_teacher
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    keys = [f"m{i}" for i in range(len(PROMPTS))]
    requests = [r for seed in range(10, 130, 10) for r in build_requests(encoded, keys, seed=seed, max_new_tokens=8,
                                                                         limit=256)]
    assert sum(len(r.prompt) for r in requests) > 4096
    together = engine.generate(requests, temperature=1.0)
    assert len(together) == len(requests)
    assert engine.generate(requests[-3:], temperature=1.0) == together[-3:]


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_vllm_samples_are_draws_from_the_reference_model(engine, world_teacher):
    """The calibration check (adakd.evaluation.calibration) on vLLM's samples, scored by the transformers model: the
    engine's model, its logits processing and its random draws give the model's distribution at the temperature
    asked for (the native sampler passes the same check, tests/test_calibration.py); a temperature it did not
    honour would be caught (0.7 is). Its log-probabilities are the model's too."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from adakd.evaluation.calibration import calibration, surprisal_gaps

    from .test_calibration import world_prompts
    _, model, tok = world_teacher
    encoded = world_prompts(tok)
    keys = [f"c{i}" for i in range(len(encoded))]
    requests = [r for seed in range(10, 110, 10) for r in build_requests(encoded, keys, seed=seed, max_new_tokens=32,
                                                                         limit=256)]

    def z(temperature):
        answers = engine.generate(requests, temperature=temperature)
        gaps = surprisal_gaps(model, [r.prompt for r in requests], answers, eos_ids=engine.eos_ids,
                              caps=[r.max_tokens for r in requests])
        return calibration(gaps)["z"], answers

    exact, answers = z(1.0)
    assert abs(exact) < 4
    assert z(0.7)[0] < -4
    seqs = [r.prompt + a for r, a in zip(requests[:24], answers[:24])]
    scored = engine.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                                 SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False),
                                 use_tqdm=False)
    worst = 0.0
    for s, res in zip(seqs, scored):
        with torch.no_grad():
            ref = model(torch.tensor([s])).logits[0].double().log_softmax(-1)
        worst = max(worst, max(abs(res.prompt_logprobs[i][s[i]].logprob - ref[i - 1, s[i]].item())
                               for i in range(1, len(s))))
    assert worst < 1e-3


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_refreshed_weights_are_the_ones_that_sample(engine, world_teacher):
    """Greedy decoding after load_weights equals the native greedy decoding of the new weights."""
    _, model, tok = world_teacher
    encoded = [tok(p)["input_ids"] for p in PROMPTS[:4]]
    keys = [f"g{i}" for i in range(4)]
    reqs = build_requests(encoded, keys, seed=10, max_new_tokens=12, limit=256)
    before = engine.generate(reqs, temperature=0.0)
    assert before == generate_from_ids(model, tok, encoded, keys, seed=10, max_new_tokens=12, temperature=0.0,
                                       progress=False)
    changed = type(model)(model.config)
    gen = torch.Generator().manual_seed(0)
    changed.load_state_dict({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()})
    changed.eval()
    try:
        engine.load_weights((k, v) for k, v in changed.state_dict().items())
        after = engine.generate(reqs, temperature=0.0)
        native = generate_from_ids(changed, tok, encoded, keys, seed=10, max_new_tokens=12, temperature=0.0,
                                   progress=False)
        assert after == native and after != before
    finally:
        engine.load_weights((k, v) for k, v in model.state_dict().items())
    assert engine.generate(reqs, temperature=0.0) == before


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_smoke_run_evaluates_and_trains_gkd_through_vllm(tmp_path):
    """The whole pipeline with eval.engine=vllm: GKD samples on-policy through a refreshed engine (every batch on
    policy), the trained student is evaluated by another engine; the costs are recorded."""
    from adakd.experiment.runner import run
    # one head per layer: vLLM's CPU attention has no kernel for the tiny pair's head size 16 (refused: below)
    heads = ["model.teacher.arch.n_head=1", "model.student.arch.n_head=1"]
    cfg = compose_cfg(["experiment=smoke", "method=gkd", "++method.recipe_params.lambda=1.0", "train.steps=4",
                       "train.ckpt_every=2", "eval.engine=vllm", f"run.output_root={tmp_path}", "run.progress=false",
                       *heads])
    metrics = run(cfg)
    assert metrics["status"] == "ok" and metrics["protocol"]["generation"]["engine"] == "vllm"
    run_dir = tmp_path / "runs" / metrics["run"]["dir"].split("/")[-1]
    eng = metrics["run"]["eval_engine"]
    assert eng["requests"] == 24 and eng["startup_seconds"] > 0
    sampling = metrics["run"]["sampling_engine"]
    assert sampling["refreshes"] >= 4 and sampling["requests"] > 0   # every micro-batch on-policy, refreshed
    rows = [json.loads(line) for line in (run_dir / "recipe_log.jsonl").read_text().splitlines()]
    assert all(r["on_policy_frac"] == 1.0 for r in rows)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["eval_engine"]["engine"] == "vllm" and info["sampling_engine"]["refreshes"] >= 4
    preds = (run_dir / "predictions").glob("*.jsonl")
    assert sum(len(p.read_text().splitlines()) for p in preds) == 24
    assert torch.get_num_threads() == 1     # the engine gave the process its threads back




@pytest.mark.vllm
@needs_vllm
def test_a_head_size_without_a_cpu_kernel_is_refused_when_the_engine_starts(tmp_path):
    from adakd.models import model_from_arch
    model_from_arch({"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}, 300, 0, 0).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="head size 16"):
        vllm_engine.VLLMEngine(str(tmp_path), eos_ids={0})


def test_head_size_from_config():
    assert vllm_engine.head_size({"n_embd": 192, "n_head": 6}) == 32
    assert vllm_engine.head_size({"hidden_size": 576, "num_attention_heads": 9}) == 64
    assert vllm_engine.head_size({"head_dim": 80, "hidden_size": 1}) == 80
    assert vllm_engine.head_size({}) is None


@pytest.mark.vllm
@pytest.mark.integration
@needs_vllm
def test_seqkd_teacher_responses_through_vllm_are_cached_under_their_own_key(tmp_path):
    from adakd.experiment.runner import run
    heads = ["model.teacher.arch.n_head=1", "model.student.arch.n_head=1"]
    base = ["experiment=smoke", "method=seqkd", "train.steps=2", "train.ckpt_every=0", f"run.output_root={tmp_path}",
            "run.progress=false", "dataset.n_train=40", *heads]
    metrics = run(compose_cfg([*base, "++method.recipe_params.engine=vllm"]))
    assert metrics["status"] == "ok" and metrics["protocol"]["generation"]["engine"] == "native"
    sampling = metrics["run"]["sampling_engine"]
    assert sampling["requests"] == 40 and sampling["startup_seconds"] > 0
    def caches():   # each cache directory (its build lock, .<key>.lock, sits beside it)
        return sorted(p for p in (tmp_path / "cache" / "seqkd").iterdir() if p.is_dir())
    assert len(caches()) == 1
    meta = json.loads((caches()[0] / "meta.json").read_text())
    assert meta["sampling"]["engine"] == "vllm" and meta["n"] == 40
    run(compose_cfg(base))   # the native sampler's responses are another cache
    assert len(caches()) == 2
