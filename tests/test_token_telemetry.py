"""Per-token telemetry read by place in the answer (target, position, tokens to the end), the gradient scale of
each kept token, and the end-of-answer temperature switch (adakd.end_tau), against float64 readings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from adakd.assemble.identity import run_dir, semantic_config
from adakd.experiment.config_check import ConfigError, validate_config
from adakd.kd.losses import per_token
from adakd.kd.objective import HiddenStates, build_objective
from adakd.schema import AdakdConfig, MethodConfig
from adakd.training.loop import token_places

from .compose import compose_cfg
from .oracles import oracle_divergence
from .test_objective import make_batch, make_hidden, oracle_adakd


def assert_rkl_at(loss, stats, s, t, kept, tau):
    """The loss is the float64 reverse KL of the kept tokens at temperatures tau (tau^2-weighted mean), and the
    telemetry records those temperatures."""
    v = s.shape[-1]
    S, T = s.reshape(-1, v).numpy()[kept], t.reshape(-1, v).numpy()[kept]
    expect = (oracle_divergence("rkl", S / tau[:, None], T / tau[:, None]) * tau**2).mean()
    assert loss.item() == pytest.approx(expect, rel=1e-10)
    np.testing.assert_allclose(stats["_tensors"]["tau"].numpy(), tau, rtol=1e-12)


def _objective(impl: str, *, end_tau=None, eos_id=None, ratio=0.55, name="rkl"):
    a = AdakdConfig(latf=ratio < 1, idts=True, ratio_schedule="fixed", ratio_end=ratio, end_tau=end_tau)
    return build_objective(MethodConfig(divergence=name), a, total_steps=10, impl=impl, chunk_size=4,
                           eos_id=eos_id)


def _often_kept_label(s, t, labels, ratio):
    """A label id that occurs among the kept tokens, and not at every kept position (so both kinds exist)."""
    _, kept, _ = oracle_adakd(s, t, labels, "rkl", ratio=ratio, idts=True)
    kept_labels = labels.reshape(-1)[torch.as_tensor(kept)]
    ids, counts = kept_labels.unique(return_counts=True)
    return int(ids[counts.argmax()])


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("end_tau", [1.0, 0.7])
def test_end_tau_holds_that_tokens_temperature_and_matches_the_float64_reading(impl, end_tau):
    s, t, labels = make_batch(seed=5)
    eos = _often_kept_label(s, t, labels, 0.55)
    loss, stats = _objective(impl, end_tau=end_tau, eos_id=eos)(s, t, labels, telemetry=True)

    _, kept, tau = oracle_adakd(s, t, labels, "rkl", ratio=0.55, idts=True)
    at_eos = labels.reshape(-1).numpy()[kept] == eos
    assert 0 < at_eos.sum() < len(kept)
    tau = np.where(at_eos, end_tau, tau)
    assert_rkl_at(loss, stats, s, t, kept, tau)


def test_end_tau_unset_is_the_policys_temperatures_bit_for_bit():
    s, t, labels = make_batch(seed=6)
    plain, _ = _objective("chunked")(s, t, labels)
    unset, _ = _objective("chunked", eos_id=3)(s, t, labels)
    assert torch.equal(plain, unset)


def test_end_tau_on_the_fused_path_equals_the_reference():
    hs, ws, bs, ht, wt, bt, labels = make_hidden(seed=2)
    s = torch.nn.functional.linear(hs, ws, bs)
    t = torch.nn.functional.linear(ht, wt, bt)
    eos = _often_kept_label(s, t, labels, 0.55)
    ref, _ = _objective("reference", end_tau=1.0, eos_id=eos)(s, t, labels)
    fused, _ = _objective("chunked", end_tau=1.0, eos_id=eos)(HiddenStates(hs, ws, bs), HiddenStates(ht, wt, bt),
                                                              labels)
    assert fused.item() == pytest.approx(ref.item(), rel=1e-10)
    other, _ = _objective("reference", end_tau=0.5, eos_id=eos)(s, t, labels)
    assert other.item() != pytest.approx(ref.item(), rel=1e-6)   # the switch reaches the loss


def test_end_tau_needs_an_eos_id():
    with pytest.raises(ValueError, match="end-of-sequence"):
        _objective("chunked", end_tau=1.0, eos_id=None)


@pytest.mark.parametrize("name", ["rkl", "abkd", "srkl"])
def test_gradient_scales_are_the_float64_gradient_norms_of_each_kept_term(name):
    s, t, labels = make_batch(seed=7)
    _, stats = _objective("chunked", name=name)(s, t, labels, telemetry=True)
    tel = stats["_tensors"]
    v = s.shape[-1]
    kept = tel["kept_index"]
    S = s.reshape(-1, v)[kept].clone().requires_grad_(True)
    T = t.reshape(-1, v)[kept]
    tau = tel["tau"].to(torch.float64)[:, None]

    def norms(scale):
        x = S if scale is None else S / scale
        y = T if scale is None else T / scale
        vals = per_token(name, x, y)
        if scale is not None:
            vals = vals * scale[:, 0] ** 2
        (g,) = torch.autograd.grad(vals.sum(), S)
        return g.norm(dim=-1).numpy()

    np.testing.assert_allclose(tel["grad_norm"].numpy(), norms(tau), rtol=1e-5)
    np.testing.assert_allclose(tel["grad_norm_t1"].numpy(), norms(None), rtol=1e-5)
    assert not np.allclose(tel["grad_norm"].numpy(), tel["grad_norm_t1"].numpy())   # IDTS changed them


def test_token_places_read_each_token_by_its_place_in_the_answer():
    mask = torch.tensor([[False, True, True, True, False], [False, False, True, True, False]])
    targets = torch.tensor([5, 6, 2, 7, 2])   # the flat order of the masked positions
    places = token_places(mask, targets)
    assert places["position"].tolist() == [0, 1, 2, 0, 1]
    assert places["to_end"].tolist() == [2, 1, 0, 1, 0]
    assert places["target"].tolist() == [5, 6, 2, 7, 2]


def test_end_tau_unset_keeps_every_run_directory_and_set_is_another_run():
    cfg = compose_cfg(["experiment=smoke"])
    assert "end_tau" not in semantic_config(cfg)["adakd"]
    held = cfg.copy()
    OmegaConf.update(held, "adakd.end_tau", 1.0)
    assert semantic_config(held)["adakd"]["end_tau"] == 1.0
    assert run_dir(held, "x") != run_dir(cfg, "x")


def test_end_tau_must_be_positive():
    cfg = compose_cfg(["adakd.end_tau=0.0"])
    with pytest.raises(ConfigError, match="adakd.end_tau"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------------ reading it back
def _write_run(tmp_path, name, answers, telemetry=None):
    import json
    run = tmp_path / name
    (run / "predictions").mkdir(parents=True)
    lines = [json.dumps({"id": f"x-{i}", "seed": 10, "prompt": "p", "prediction": a, "references": ["r"],
                         "rougeL": score}) for i, (a, score) in enumerate(answers)]
    (run / "predictions" / "world-test.jsonl").write_text("\n".join(lines) + "\n")
    if telemetry is not None:
        (run / "telemetry.jsonl").write_text("\n".join(json.dumps(r) for r in telemetry) + "\n")
    return run


def test_diagnose_answers_and_pairs_set_near_empty_answers_aside(tmp_path):
    from adakd.experiment.diagnose import answer_stats, paired_completed
    a = _write_run(tmp_path, "a", [("", 0.0), ("a long enough answer", 40.0), ("another full answer", 20.0)])
    b = _write_run(tmp_path, "b", [("a long enough answer", 30.0), ("short", 5.0), ("another full answer", 50.0)])
    s = answer_stats(a, "world-test")
    assert s["near_empty"] == pytest.approx(1 / 3) and s["rougeL"] == pytest.approx(20.0)
    p = paired_completed(a, b, "world-test")
    assert (p["n"], p["of"], p["a"], p["b"]) == (1.0, 3.0, 20.0, 50.0)   # only x-2 is complete in both


def test_diagnose_tokens_groups_by_place_and_aligns_the_kept_tensors(tmp_path):
    from adakd.experiment.diagnose import tokens_by_place
    row = {"step": 1, "position": [0, 1, 2, 3, 0, 1], "to_end": [3, 2, 1, 0, 1, 0],
           "kept": [1, 0, 1, 1, 1, 1], "difficulty": [0.9, 0.1, 0.5, 0.3, 0.8, 0.2],
           "tau": [0.6, 1.0, 1.4, 0.7, 1.5], "grad_norm": [4.0, 1.0, 1.0, 3.0, 1.0],
           "grad_norm_t1": [2.0, 1.0, 0.5, 2.0, 0.5]}
    run = _write_run(tmp_path, "r", [("x" * 20, 1.0)], telemetry=[row])
    by = tokens_by_place(run)
    assert by["end"]["n"] == 2 and by["end"]["tau"] == pytest.approx((1.4 + 1.5) / 2)
    assert by["first"]["kept"] == pytest.approx(3 / 4)    # positions 0, 1, 2 and the second answer's 0
    assert by["first"]["tau"] == pytest.approx((0.6 + 1.0 + 0.7) / 3)
    assert by["end"]["grad_share"] == pytest.approx(2.0 / 10.0)
    assert by["rest"]["n"] == 0


@pytest.mark.parametrize("half", ["warm", "cool"])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_tau_half_applies_only_the_warm_or_the_cool_temperatures(half, impl):
    s, t, labels = make_batch(seed=8)
    a = AdakdConfig(latf=True, idts=True, ratio_schedule="fixed", ratio_end=0.55, tau_half=half)
    obj = build_objective(MethodConfig(divergence="rkl"), a, total_steps=10, impl=impl, chunk_size=4)
    loss, stats = obj(s, t, labels, telemetry=True)
    _, kept, tau = oracle_adakd(s, t, labels, "rkl", ratio=0.55, idts=True)
    assert (tau > 1).any() and (tau < 1).any()
    tau = np.maximum(tau, 1.0) if half == "warm" else np.minimum(tau, 1.0)
    assert_rkl_at(loss, stats, s, t, kept, tau)


def test_tau_half_both_keeps_the_run_directory_and_a_bad_value_is_refused():
    cfg = compose_cfg(["experiment=smoke"])
    assert "tau_half" not in semantic_config(cfg)["adakd"]
    warm = cfg.copy()
    OmegaConf.update(warm, "adakd.tau_half", "warm")
    assert run_dir(warm, "x") != run_dir(cfg, "x")
    with pytest.raises(ConfigError, match="adakd.tau_half"):
        validate_config(compose_cfg(["adakd.tau_half=hot"]))
