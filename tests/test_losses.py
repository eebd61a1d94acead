"""Base divergences: an independent numpy float64 oracle, golden values, identities, numerics, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adakd.kd.losses import DIVERGENCES, build_divergence, per_token

from .oracles import oracle_divergence

NAMES = ["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "abkd", "akl"]
INF = float("inf")


def rand_logits(n=6, v=11, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    return s.to(dtype), t.to(dtype)


PARAM_CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.9}),
    ("tvd", {}),
    ("sfkl", {}),
    ("sfkl", {"alpha": 0.4}),
    ("srkl", {}),
    ("srkl", {"alpha": 0.3}),
    ("abkd", {}),
    ("abkd", {"alpha": 0.5, "beta": 0.5}),
    ("abkd", {"alpha": 1.5, "beta": 0.3}),
    ("akl", {}),
    ("akl", {"mu": 0.9}),
    ("akl", {"mu": 0.1}),
]


# ------------------------------------------------------------------------------------------------
def test_registry_and_defaults():
    assert sorted(DIVERGENCES) == sorted(NAMES)
    assert build_divergence("jsd").beta == 0.1
    assert build_divergence("sfkl").alpha == 0.1 and build_divergence("srkl").alpha == 0.1
    d = build_divergence("abkd")
    assert (d.alpha, d.beta) == (0.2, 0.7)
    assert build_divergence("akl").mu == 0.5


@pytest.mark.parametrize("name,kw", PARAM_CASES)
def test_matches_oracle_float64(name, kw):
    s, t = rand_logits(n=7, v=13, seed=hash(name) % 1000)
    got = per_token(name, s, t, **kw)
    assert got.shape == (7,) and got.dtype == torch.float64
    np.testing.assert_allclose(
        got.numpy(), oracle_divergence(name, s.numpy(), t.numpy(), **kw), rtol=1e-10, atol=1e-13
    )


@pytest.mark.parametrize("name", NAMES)
def test_zero_on_identical_and_nonnegative(name):
    s, t = rand_logits(n=20, v=9, seed=3, scale=3.0)
    assert per_token(name, s, s).abs().max() < 1e-12
    assert per_token(name, s.float(), s.float()).abs().max() < 1e-5
    assert per_token(name, s, t).min() >= -1e-12
    assert per_token(name, s.float() * 5, t.float() * 5).min() >= -1e-5


def test_abkd_nonnegative_over_parameters():
    s, t = rand_logits(n=20, v=9, seed=4, scale=3.0)
    for a, b in [(0.1, 0.1), (0.2, 0.7), (1.0, 1.0), (2.0, 0.5), (0.0, 0.3), (0.4, 0.0)]:
        assert per_token("abkd", s, t, alpha=a, beta=b).min() >= -1e-12


# ------------------------------------------------------------------------------------------------
# golden values on a hand-computed example: p = (1/2, 1/2), q = (4/5, 1/5)
# ------------------------------------------------------------------------------------------------
P2, Q2 = (0.5, 0.5), (0.8, 0.2)
ln = math.log
GOLDEN = {
    "fkl": 0.5 * ln(0.5 / 0.8) + 0.5 * ln(0.5 / 0.2),  # = ln 1.25
    "rkl": 0.8 * ln(0.8 / 0.5) + 0.2 * ln(0.2 / 0.5),
    "tvd": 0.5 * (0.3 + 0.3),
    # jsd, beta = 0.5: m = (0.65, 0.35)
    "jsd": 0.5 * (0.5 * ln(0.5 / 0.65) + 0.5 * ln(0.5 / 0.35))
    + 0.5 * (0.8 * ln(0.8 / 0.65) + 0.2 * ln(0.2 / 0.35)),
    # sfkl, alpha = 0.1: mixture 0.1 p + 0.9 q = (0.77, 0.23)
    "sfkl": 0.5 * ln(0.5 / 0.77) + 0.5 * ln(0.5 / 0.23),
    # srkl, alpha = 0.1: mixture 0.1 q + 0.9 p = (0.53, 0.47)
    "srkl": 0.8 * ln(0.8 / 0.53) + 0.2 * ln(0.2 / 0.47),
    # abkd, alpha = beta = 1/2: 2 sum (sqrt p - sqrt q)^2
    "abkd": 2 * ((math.sqrt(0.5) - math.sqrt(0.8)) ** 2 + (math.sqrt(0.5) - math.sqrt(0.2)) ** 2),
}
GOLDEN_PARAMS = {"jsd": {"beta": 0.5}, "abkd": {"alpha": 0.5, "beta": 0.5}}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name):
    s = torch.tensor([[ln(Q2[0]), ln(Q2[1])]], dtype=torch.float64)
    t = torch.tensor([[ln(P2[0]), ln(P2[1])]], dtype=torch.float64) + 3.0  # logits shift-invariant
    got = per_token(name, s, t, **GOLDEN_PARAMS.get(name, {})).item()
    assert got == pytest.approx(GOLDEN[name], rel=1e-12)
    assert math.isclose(GOLDEN["fkl"], ln(1.25), rel_tol=1e-14)


def test_golden_akl():
    # p = (0.7, 0.2, 0.1), q = (0.5, 0.1, 0.4), mu = 0.5: head = {0} (0.7 >= 0.5 reached by one slot)
    # g_head = 0.2, g_tail = 0.1 + 0.3 = 0.4 -> w_head = 1/3
    p, q = (0.7, 0.2, 0.1), (0.5, 0.1, 0.4)
    fkl = sum(pi * ln(pi / qi) for pi, qi in zip(p, q, strict=False))
    rkl = sum(qi * ln(qi / pi) for pi, qi in zip(p, q, strict=False))
    s = torch.tensor([[ln(x) for x in q]], dtype=torch.float64)
    t = torch.tensor([[ln(x) for x in p]], dtype=torch.float64)
    assert per_token("akl", s, t).item() == pytest.approx(fkl / 3 + 2 * rkl / 3, rel=1e-12)
    # mu = 0.8: head = {0, 1} (0.7 < 0.8, 0.9 >= 0.8): g_head = 0.3, g_tail = 0.3 -> 1/2 each
    assert per_token("akl", s, t, mu=0.8).item() == pytest.approx(fkl / 2 + rkl / 2, rel=1e-12)
    w = build_divergence("akl").head_weight(torch.log_softmax(s, -1), torch.log_softmax(t, -1))
    assert w.item() == pytest.approx(1 / 3, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# identities
# ------------------------------------------------------------------------------------------------
def test_skew_kl_with_alpha_zero_is_plain_kl():
    s, t = rand_logits(n=10, v=17, seed=5, scale=4.0)
    assert torch.equal(per_token("sfkl", s, t, alpha=0.0), per_token("fkl", s, t))
    assert torch.equal(per_token("srkl", s, t, alpha=0.0), per_token("rkl", s, t))
    sf, tf = s.float(), t.float()
    assert torch.equal(per_token("sfkl", sf, tf, alpha=0.0), per_token("fkl", sf, tf))


def test_jsd_endpoints_and_limits():
    s, t = rand_logits(n=8, v=12, seed=6)
    assert per_token("jsd", s, t, beta=0.0).abs().max() == 0
    assert per_token("jsd", s, t, beta=1.0).abs().max() == 0
    # JSD_beta = beta·KL(p||q) + O(beta^2) (and mirrored at 1); the O(beta^2) term scales with chi^2
    b = 1e-8
    torch.testing.assert_close(per_token("jsd", s, t, beta=b) / b, per_token("fkl", s, t), rtol=1e-5, atol=0)
    one_minus = 1.0 - b
    torch.testing.assert_close(
        per_token("jsd", s, t, beta=one_minus) / (1.0 - one_minus), per_token("rkl", s, t), rtol=1e-5, atol=0
    )
    # beta = 1/2 is symmetric in (p, q)
    torch.testing.assert_close(
        per_token("jsd", s, t, beta=0.5), per_token("jsd", t, s, beta=0.5), rtol=1e-12, atol=0
    )


def test_abkd_special_cases():
    s, t = rand_logits(n=8, v=12, seed=7)
    fkl, rkl = per_token("fkl", s, t), per_token("rkl", s, t)
    torch.testing.assert_close(per_token("abkd", s, t, alpha=1.0, beta=0.0), fkl, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(per_token("abkd", s, t, alpha=0.0, beta=1.0), rkl, rtol=1e-12, atol=1e-14)
    # the limit formulas are continuous with the general one
    torch.testing.assert_close(per_token("abkd", s, t, alpha=1.0, beta=1e-7), fkl, rtol=1e-5, atol=0)
    torch.testing.assert_close(per_token("abkd", s, t, alpha=1e-7, beta=1.0), rkl, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        per_token("abkd", s, t, alpha=0.7, beta=1e-8),
        per_token("abkd", s, t, alpha=0.7, beta=0.0),
        rtol=1e-5,
        atol=0,
    )
    # alpha = beta = 1/2: four times the squared Hellinger distance
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    hell2 = 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)
    torch.testing.assert_close(per_token("abkd", s, t, alpha=0.5, beta=0.5), 4 * hell2, rtol=1e-10, atol=0)
    # alpha + beta = 1 (alpha-divergence family) agrees with the oracle too
    np.testing.assert_allclose(
        per_token("abkd", s, t, alpha=0.3, beta=0.7).numpy(),
        oracle_divergence("abkd", s.numpy(), t.numpy(), alpha=0.3, beta=0.7),
        rtol=1e-10,
    )


def test_akl_lies_between_fkl_and_rkl():
    s, t = rand_logits(n=30, v=10, seed=8, scale=3.0)
    a, f, r = per_token("akl", s, t), per_token("fkl", s, t), per_token("rkl", s, t)
    assert torch.all(a >= torch.minimum(f, r) - 1e-12) and torch.all(a <= torch.maximum(f, r) + 1e-12)


# ------------------------------------------------------------------------------------------------
# numerics: dtypes, -inf
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_dtypes(name):
    s, t = rand_logits(n=5, v=32, seed=9, dtype=torch.float32)
    ref = per_token(name, s, t)
    assert ref.dtype == torch.float32
    for low in (torch.bfloat16, torch.float16):
        got = per_token(name, s.to(low), t.to(low))
        assert got.dtype == torch.float32  # math upcast, not done in half precision
        exact = per_token(name, s.to(low).float(), t.to(low).float())
        torch.testing.assert_close(got, exact, rtol=0, atol=0)
    assert per_token(name, s.double(), t.double()).dtype == torch.float64
    # mixed: bf16 student, float64 teacher -> float64
    assert per_token(name, s.bfloat16(), t.double()).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_shared_neg_inf_slots_are_outside_the_support(name):
    """-inf in both at the same slots == the divergence on the vocabulary without those slots."""
    s, t = rand_logits(n=6, v=10, seed=10)
    s2, t2 = s.clone(), t.clone()
    s2[:, [2, 7]] = -INF
    t2[:, [2, 7]] = -INF
    keep = [i for i in range(10) if i not in (2, 7)]
    kw = {"alpha": 0.5, "beta": 0.5} if name == "abkd" else {}
    torch.testing.assert_close(
        per_token(name, s2, t2, **kw), per_token(name, s[:, keep], t[:, keep], **kw), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_values_and_gradients_with_neg_inf(name, dtype):
    s, t = rand_logits(n=6, v=10, seed=11, dtype=dtype)
    s, t = s.clone(), t.clone()
    s[0, 1] = -INF  # student only
    t[1, 2] = -INF  # teacher only
    s[2, 3] = t[2, 3] = -INF  # both
    s[3, :] = torch.where(torch.arange(10) < 5, s[3], torch.full_like(s[3], -INF))  # half the vocabulary
    t[4, :9] = -INF  # teacher certain
    s = s.requires_grad_()
    t = t.requires_grad_()
    out = per_token(name, s, t)
    assert torch.isfinite(out).all()
    assert out.min() >= -1e-5
    out.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


def test_neg_inf_convention_for_kl():
    """An exact zero facing positive mass is floored at the dtype's smallest normal number."""
    s = torch.tensor([[0.0, 0.0, -INF]], dtype=torch.float64)  # q = (1/2, 1/2, 0)
    t = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)  # p = (1/3, 1/3, 1/3)
    floor64 = math.log(torch.finfo(torch.float64).tiny)
    # fkl: the third term p log(p / 0) uses log 0 := log tiny
    expect = 2 / 3 * math.log(2 / 3) + 1 / 3 * (math.log(1 / 3) - floor64)
    assert per_token("fkl", s, t).item() == pytest.approx(expect, rel=1e-12)
    # rkl: q = 0 there, so the exact value log(3/2)
    assert per_token("rkl", s, t).item() == pytest.approx(math.log(1.5), rel=1e-12)
    # rkl with the teacher certain: positive, and the gradient moves mass off the impossible tokens
    s2 = torch.zeros(1, 3, dtype=torch.float32, requires_grad=True)
    t2 = torch.tensor([[-INF, -INF, 0.0]])
    value = per_token("rkl", s2, t2)
    floor32 = math.log(torch.finfo(torch.float32).tiny)
    assert value.item() == pytest.approx(math.log(1 / 3) - 2 / 3 * floor32, rel=1e-6)
    value.sum().backward()
    assert s2.grad[0, 0] > 0 and s2.grad[0, 1] > 0 and s2.grad[0, 2] < 0


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [c for c in PARAM_CASES if c[0] != "akl"])
def test_gradcheck_float64(name, kw):
    s, t = rand_logits(n=3, v=5, seed=12)
    div = build_divergence(name, **kw)
    assert torch.autograd.gradcheck(
        lambda a, b: div.per_token(a, b), (s.requires_grad_(), t.requires_grad_()), eps=1e-6, atol=1e-7
    )


def test_akl_gradient_has_detached_weights():
    s, t = rand_logits(n=4, v=6, seed=13)
    s.requires_grad_()
    div = build_divergence("akl")
    w = div.head_weight(torch.log_softmax(s.detach(), -1), torch.log_softmax(t, -1))
    (g,) = torch.autograd.grad(div.per_token(s, t).sum(), s)
    (g_ref,) = torch.autograd.grad((w * per_token("fkl", s, t) + (1 - w) * per_token("rkl", s, t)).sum(), s)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["fkl", "rkl"])
@pytest.mark.parametrize("with_inf", [False, True])
def test_analytic_gradient_equals_autograd(name, with_inf):
    s, t = rand_logits(n=6, v=10, seed=14, scale=3.0)
    if with_inf:
        s, t = s.clone(), t.clone()
        s[0, 1] = -INF
        t[1, 2] = -INF
        s[2, 3] = t[2, 3] = -INF
    div = build_divergence(name)
    values, grad = div.value_and_grad(s, t)
    x = s.clone().requires_grad_()
    expect = div.per_token(x, t)
    (g_ref,) = torch.autograd.grad(expect.sum(), x)
    assert torch.equal(values, expect.detach())
    torch.testing.assert_close(grad, g_ref, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("jsd", {"beta": 1.5}, r"beta must be in \[0, 1\]"),
        ("jsd", {"beta": -0.1}, r"beta must be in \[0, 1\]"),
        ("sfkl", {"alpha": 1.0}, r"alpha must be in \[0, 1\)"),
        ("srkl", {"alpha": -0.2}, r"alpha must be in \[0, 1\)"),
        ("abkd", {"alpha": -0.1}, r"alpha and beta must be >= 0"),
        ("abkd", {"alpha": 0.0, "beta": 0.0}, r"not both 0"),
        ("akl", {"mu": 0.0}, r"mu must be in \(0, 1\]"),
        ("akl", {"mu": float("nan")}, r"finite real"),
        ("rkl", {"alpha": 0.1}, r"unknown parameter.*valid parameters: none"),
        ("jsd", {"alpha": 0.1}, r"unknown parameter.*valid parameters: beta"),
        ("jsd", {"beta": "0.5"}, r"finite real"),
    ],
)
def test_parameter_validation(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_divergence(name, **kw)


def test_unknown_name_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown divergence 'kl'.*fkl"):
        build_divergence("kl")
    with pytest.raises(ValueError, match="align_vocab"):
        per_token("rkl", torch.zeros(2, 5), torch.zeros(2, 6))
