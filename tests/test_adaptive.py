"""Difficulty metrics, LATF controller and ratio schedules, temperature policies (IDTS, CTKD, logit std)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adakd.kd.adaptive import (
    IDTS,
    METRICS,
    ConstantTemperature,
    CosineRatio,
    CTKDTemperature,
    DifficultyMetric,
    LATFController,
    LinearRatio,
    LogitStandardization,
    build_ratio_schedule,
    build_temperature,
    difficulty,
    gradient_reversal,
    idts_temperatures,
    standardize_logits,
)

INF = float("inf")


def rand_logits(n=8, v=12, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, v, generator=g, dtype=torch.float64) * scale,
        torch.randn(n, v, generator=g, dtype=torch.float64) * scale,
    )


def np_softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# difficulty
# ------------------------------------------------------------------------------------------------
def oracle_metric(name, s, t, labels=None):
    q, p = np_softmax(s), np_softmax(t)
    if name == "hellinger":
        return np.sqrt(((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)) / np.sqrt(2)
    if name == "fkl":
        return (p * np.log(p / q)).sum(-1)
    if name == "rkl":
        return (q * np.log(q / p)).sum(-1)
    if name == "jsd":
        m = 0.5 * (p + q)
        return 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    if name == "ce":
        return -np.log(q[np.arange(len(q)), labels])
    if name == "entropy":
        return -(q * np.log(q)).sum(-1)
    if name == "bhattacharyya":
        return -np.log(np.sqrt(p * q).sum(-1))
    raise KeyError(name)


@pytest.mark.parametrize("name", ["hellinger", "fkl", "rkl", "jsd", "ce", "entropy", "bhattacharyya"])
def test_metrics_match_oracle(name):
    s, t = rand_logits(seed=1)
    labels = torch.arange(8) % 12
    got = difficulty(name, s, t, labels=labels)
    np.testing.assert_allclose(
        got.numpy(), oracle_metric(name, s.numpy(), t.numpy(), labels.numpy()), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("name", [m for m in METRICS if m != "random"])
def test_metrics_have_no_gradient_and_are_float32_at_least(name):
    s, t = rand_logits(seed=2)
    s = s.float().requires_grad_()
    out = difficulty(name, s.bfloat16(), t.bfloat16(), labels=torch.zeros(8, dtype=torch.long))
    assert not out.requires_grad and out.dtype == torch.float32 and out.shape == (8,)
    assert torch.isfinite(out).all()


def test_hellinger_range_and_extremes():
    s, t = rand_logits(n=50, seed=3, scale=6.0)
    h = difficulty("hellinger", s, t)
    assert h.min() >= 0 and h.max() <= 1
    assert difficulty("hellinger", s, s).abs().max() < 1e-7
    # disjoint supports: distance 1
    a = torch.tensor([[0.0, -INF], [0.0, 0.0]])
    b = torch.tensor([[-INF, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(difficulty("hellinger", a, b), torch.tensor([1.0, 0.0]))


def test_metrics_finite_with_neg_inf():
    s, t = rand_logits(seed=4)
    s[0, :6] = -INF
    t[1, 3:] = -INF
    for name in METRICS:
        if name == "random":
            continue
        out = difficulty(name, s, t, labels=torch.full((8,), 1))
        assert not torch.isnan(out).any(), name


def test_nmtkd_ranking_violations():
    # teacher prefers 0 > 1 > 2 > 3; a student with the same order has no violation
    t = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    same = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64))
    rev = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64))
    assert difficulty("nmtkd", same, t, k=3).item() == 0.0
    # k = 2: teacher top-2 {0, 1}, student top-2 {3, 2}.
    # top-1 term: relu(q1 - q0) = 0.1; top-k term: every teacher top-2 token u is preferred over the
    # student's top-2 v in {3, 2}, margins q_v - q_u: (0.4-0.1)+(0.3-0.1)+(0.4-0.2)+(0.3-0.2) = 0.8
    assert difficulty("nmtkd", rev, t, k=2).item() == pytest.approx(0.9, rel=1e-12)
    assert difficulty("nmtkd", rev, t, k=3).item() > difficulty("nmtkd", rev, t, k=1).item()


def test_random_metric_uses_its_generator_only():
    state = torch.random.get_rng_state()
    a = DifficultyMetric("random", generator=torch.Generator().manual_seed(7)).constant(
        10, torch.device("cpu")
    )
    b = DifficultyMetric("random", generator=torch.Generator().manual_seed(7)).constant(
        10, torch.device("cpu")
    )
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG was not touched
    assert torch.equal(difficulty("all", *rand_logits()), torch.ones(8, dtype=torch.float64))
    assert DifficultyMetric("all").keeps_all and not DifficultyMetric("random").uses_logits


def test_metric_validation():
    with pytest.raises(ValueError, match="unknown difficulty metric 'kl'.*hellinger"):
        DifficultyMetric("kl")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        DifficultyMetric("nmtkd", k=0)
    with pytest.raises(ValueError, match="needs the ground-truth labels"):
        difficulty("ce", *rand_logits())


# ------------------------------------------------------------------------------------------------
# LATF controller (docs/method.md section 3) on scripted loss sequences
# ------------------------------------------------------------------------------------------------
def test_latf_warmup_then_decrease_increase_and_reset():
    # ema_beta = 0: the EMA is the last loss, so each transition is easy to script.
    c = LATFController(100, ema_beta=0.0, warmup_frac=0.05, epsilon=0.05, delta=0.05, ratio_min=0.1)
    assert c.warmup_steps == 5 and c.ratio == 1.0
    for loss in (10.0, 8.0, 6.0, 4.0):  # falling loss during warm-up: r stays 1
        assert c.step_end(loss) == 1.0 and c.l_ref is None
    assert c.step_end(10.0) == 1.0 and c.l_ref == 10.0  # end of warm-up: L_ref <- EMA
    assert c.step_end(9.6) == 1.0 and c.l_ref == 10.0  # within eps (> 9.5): nothing changes
    assert c.step_end(9.4) == pytest.approx(0.95) and c.l_ref == 9.4  # < L_ref (1 - eps): r down, reset
    assert c.step_end(9.0) == pytest.approx(0.95) and c.l_ref == 9.4  # 9.0 > 9.4 * 0.95 = 8.93
    assert c.step_end(8.9) == pytest.approx(0.95**2) and c.l_ref == 8.9
    assert c.step_end(9.4) == pytest.approx(0.95**2 * 1.05) and c.l_ref == 9.4  # > L_ref (1 + eps): r up
    assert c.step_end(100.0) == pytest.approx(0.95**2 * 1.05**2) and c.l_ref == 100.0
    assert c.step_end(100.0) == pytest.approx(0.95**2 * 1.05**2)  # flat after the reset: no change
    assert c.step_end(200.0) == 1.0 and c.step == 13  # rising again: capped at 1


def test_latf_floor():
    c = LATFController(20, ema_beta=0.0, warmup_frac=0.0, delta=0.5, ratio_min=0.3)
    assert c.warmup_steps == 0
    assert c.step_end(100.0) == 1.0 and c.l_ref == 100.0  # no warm-up: L_ref set by the first step
    ratios = [c.step_end(100.0 * 0.5**i) for i in range(1, 6)]
    assert ratios == [0.5, 0.3, 0.3, 0.3, 0.3]


def test_latf_ema():
    c = LATFController(1000, ema_beta=0.99)
    c.step_end(2.0)
    assert c.ema == 2.0  # the first value initialises the EMA
    c.step_end(4.0)
    assert c.ema == pytest.approx(0.99 * 2.0 + 0.01 * 4.0)
    c.step_end(float("nan"))  # ignored (would poison the EMA), the step counts
    assert c.ema == pytest.approx(2.02) and c.step == 3


def test_latf_reaches_the_papers_regime_on_a_falling_loss():
    c = LATFController(1780)
    for i in range(1780):
        c.step_end(3.0 * math.exp(-i / 2000) + 1.0)
    assert 0.1 <= c.ratio < 1.0


def test_latf_state_dict_round_trip():
    losses = [5.0 - 0.05 * i + 0.3 * math.sin(i) for i in range(80)]
    a = LATFController(60)
    for x in losses[:30]:
        a.step_end(x)
    b = LATFController(60)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert [a.step_end(x) for x in losses[30:]] == [b.step_end(x) for x in losses[30:]]
    with pytest.raises(ValueError, match="is for 'latf'"):
        LinearRatio(10).load_state_dict(a.state_dict())


def test_ratio_schedules():
    fixed = build_ratio_schedule("fixed", 10, ratio_end=0.75)
    assert fixed.ratio == 0.75 and fixed.step_end(1.0) == 0.75
    lin = LinearRatio(10, 1.0, 0.5)
    cos = CosineRatio(10, 1.0, 0.5)
    assert lin.ratio == 1.0 and cos.ratio == 1.0
    lin_r = [lin.step_end(0.0) for _ in range(12)]
    cos_r = [cos.step_end(0.0) for _ in range(12)]
    assert lin_r[4] == pytest.approx(0.75) and cos_r[4] == pytest.approx(0.75)  # halfway
    assert lin_r[1] == pytest.approx(0.9) and cos_r[1] > 0.9  # cosine starts slowly
    assert lin_r[9] == pytest.approx(0.5) and cos_r[9] == pytest.approx(0.5)
    assert lin_r[11] == 0.5 and cos_r[11] == pytest.approx(0.5)  # held after the end
    off = build_ratio_schedule("latf", 10, enabled=False)
    assert [off.step_end(x) for x in (5.0, 1.0, 0.1)] == [1.0, 1.0, 1.0]
    restored = CosineRatio(10, 1.0, 0.5)
    restored.load_state_dict(cos.state_dict())
    assert restored.ratio == cos.ratio and restored.step == 12


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "step"}, "unknown ratio schedule"),
        ({"kind": "fixed", "ratio_end": 0.0}, r"ratio_end must be in \(0, 1\]"),
        ({"kind": "linear", "ratio_start": 1.2}, r"ratio_start must be in \(0, 1\]"),
        ({"kind": "latf", "ema_beta": 1.0}, r"ema_beta must be in \[0, 1\)"),
        ({"kind": "latf", "ratio_min": 0.0}, r"ratio_min must be in \(0, 1\]"),
    ],
)
def test_ratio_schedule_validation(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match):
        build_ratio_schedule(kind, 10, **kwargs)
    with pytest.raises(ValueError, match="total_steps"):
        LATFController(0)


# ------------------------------------------------------------------------------------------------
# IDTS and the other temperature policies
# ------------------------------------------------------------------------------------------------
def test_idts_median_is_lower_middle_and_formula():
    scores = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)  # even count: median = 0.2
    tau = idts_temperatures(scores, c=0.5, tau_base=1.0)
    expect = torch.exp(-0.5 * torch.tanh(torch.log(scores / 0.2)))
    torch.testing.assert_close(tau, expect, rtol=1e-15, atol=0)
    assert tau[3] == 1.0  # the median token
    assert tau[0] < 1 < tau[1]  # hard -> cooler, easy -> warmer
    direct = idts_temperatures(scores, c=0.5, tau_base=2.0, direction="direct")
    torch.testing.assert_close(direct, 2.0 / expect, rtol=1e-15, atol=0)


def test_idts_range_detached_and_guards():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1001, generator=g, dtype=torch.float64).pow(8).requires_grad_()
    tau = idts_temperatures(scores)
    assert not tau.requires_grad
    lo, hi = math.exp(-0.5), math.exp(0.5)
    assert tau.min() >= lo and tau.max() <= hi
    assert tau.min() < 0.62 and tau.max() > 1.6  # range reaches [0.607, 1.649]
    # s = 0 -> s_hat = -1 (warmest); median 0 -> 0/0 counts as the median; no NaN anywhere
    tau0 = idts_temperatures(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(tau0, torch.tensor([1.0, 1.0, 1.0, math.exp(-0.5)]))
    tau1 = idts_temperatures(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(
        tau1, torch.tensor([math.exp(0.5), 1.0, math.exp(-0.5 * math.tanh(math.log(2)))])
    )
    assert idts_temperatures(torch.tensor([])).numel() == 0


def test_temperature_policies():
    const = ConstantTemperature(1.0)
    assert const.temperatures(None, 4, torch.device("cpu"), torch.float32) is None  # tau = 1: no scaling
    warm = ConstantTemperature(1.2).temperatures(None, 3, torch.device("cpu"), torch.float64)
    assert torch.equal(warm, torch.full((3,), 1.2, dtype=torch.float64))
    idts = build_temperature(idts=True, temperature="ctkd", c=0.5)
    assert isinstance(idts, IDTS) and idts.uses_difficulty  # idts true wins over `temperature`
    std = build_temperature(idts=False, temperature="logit_std", tau_base=2.0)
    assert isinstance(std, LogitStandardization) and std.standardize and not std.uses_difficulty
    with pytest.raises(ValueError, match="unknown temperature strategy 'ctdk'"):
        build_temperature(idts=False, temperature="ctdk")
    with pytest.raises(ValueError, match="direction"):
        IDTS(direction="sideways")
    with pytest.raises(ValueError, match=r"tau_base must be in \(0, inf\]"):
        ConstantTemperature(0.0)


def test_standardize_logits():
    x, _ = rand_logits(n=4, v=9, seed=5, scale=3.0)
    z = standardize_logits(x)
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(-1), torch.ones(4, dtype=torch.float64), rtol=1e-6, atol=0)
    x2 = x.clone()
    x2[:, 0] = -INF
    x2.requires_grad_()
    z2 = standardize_logits(x2)
    assert torch.isneginf(z2[:, 0]).all()
    torch.testing.assert_close(z2[:, 1:], standardize_logits(x[:, 1:]))  # stats over finite entries
    torch.log_softmax(z2, -1)[:, 1:].sum().backward()
    assert torch.isfinite(x2.grad).all()


def test_gradient_reversal():
    x = torch.tensor(2.0, requires_grad=True)
    (gradient_reversal(x, 0.3) * 5.0).backward()
    assert x.grad.item() == pytest.approx(-1.5)


def test_ctkd_lambda_schedule_parameter_and_state():
    ctkd = CTKDTemperature(100, init=1.0, lambda_start=0.0, lambda_end=1.0, ramp_frac=0.2)
    assert ctkd.ramp_steps == 20 and ctkd.lam == 0.0
    (param,) = ctkd.parameters()
    assert param.requires_grad and param.item() == 1.0
    for _ in range(10):
        ctkd.step_end()
    assert ctkd.lam == pytest.approx(0.5)  # cosine ramp: halfway at half the ramp
    for _ in range(30):
        ctkd.step_end()
    assert ctkd.lam == 1.0
    tau = ctkd.temperatures(None, 3, torch.device("cpu"), torch.float64)
    assert tau.shape == (3,) and tau.dtype == torch.float64
    (tau.sum() * 2.0).backward()
    assert param.grad.item() == pytest.approx(-6.0)  # reversed: -lambda * 3 * 2
    restored = CTKDTemperature(100)
    with torch.no_grad():
        param.fill_(1.7)
    restored.load_state_dict(ctkd.state_dict())
    assert restored.step == 40 and restored.temperature.item() == pytest.approx(1.7)
    with torch.no_grad():
        param.fill_(-3.0)
    assert ctkd.temperatures(None, 1, torch.device("cpu"), torch.float32).item() == pytest.approx(
        0.1
    )  # clamp
