"""The fused path's fast parts, each against its straightforward version:
- jsd's closed-form gradient == autograd through `per_token` (values bit-identical);
- the pass-1 logit cache (`LogitCache`): fused with any cache size (none, some, exactly the kept
  tokens, more) == reference, values and gradients, with LATF + IDTS, several divergences, biases,
  padded vocabularies and masked tokens; and the float64 oracle of docs/method.md."""

from __future__ import annotations

import math

import pytest
import torch

from adakd.kd.losses import build_divergence
from adakd.kd.objective import HiddenStates, select_tokens
from adakd.kd.objective.chunks import Chunk
from adakd.kd.objective.logit_cache import LogitCache
from adakd.kd.objective.rows import HiddenRows

from .test_objective import PARAMS, _objective, _run_hidden, make_hidden, oracle_adakd

INF = float("inf")


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jsd_closed_form_gradient_equals_autograd(beta, dtype):
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(7, 12, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = (torch.randn(7, 12, generator=g, dtype=torch.float64) * 3).to(dtype)
    s[0, 1] = -INF  # student cannot reach a teacher token
    t[1, 2] = -INF  # teacher excludes a student token
    s[2, 3] = t[2, 3] = -INF  # a slot nobody reaches
    s[3, :11] = -INF  # a one-hot student
    t[4] = t[4] * 40  # a near one-hot teacher
    div = build_divergence("jsd", beta=beta)
    values, grad = div.value_and_grad(s, t)
    x = s.clone().requires_grad_()
    expect = div.per_token(x, t)
    (g_ref,) = torch.autograd.grad(expect.sum(), x)
    assert torch.equal(values, expect.detach())  # same ops: bit-identical
    assert torch.isfinite(grad).all()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, g_ref, **tol)


def _per_token_bytes(ws, wt):
    return ws.shape[0] * (ws.element_size() + wt.element_size())


def _fused(name, slots_mb, **kw):
    obj = _objective(name, "fused", **kw)
    obj.logit_cache_mb = slots_mb
    return obj


# n_valid of make_hidden(B=3, L=7) with labels[1, :3] = -100 is 18
@pytest.mark.parametrize("name", ["jsd", "rkl", "fkl", "tvd", "akl"])
@pytest.mark.parametrize("slots", [0, 1, 5, "k", 40])
def test_fused_with_any_cache_size_equals_reference(name, slots):
    hs, ws, bs, ht, wt, bt, labels = make_hidden(seed=31, V=11, Vt=12)
    for ratio, idts in [(0.6, True), (1.0, True), (0.45, False)]:
        n_valid = int((labels != -100).sum())
        k = max(1, math.floor(ratio * n_valid))
        n_slots = k if slots == "k" else slots
        mb = n_slots * _per_token_bytes(ws[:11], wt[:11]) / 2**20
        ref, st_ref = _run_hidden(
            _objective(name, "reference", ratio=ratio, idts=idts), hs, ws, bs, ht, wt, bt, labels
        )
        fus, st_fus = _run_hidden(_fused(name, mb, ratio=ratio, idts=idts), hs, ws, bs, ht, wt, bt, labels)
        for a, b in zip(fus, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        assert st_fus == pytest.approx(st_ref, rel=1e-10, abs=1e-13)
        s_log, t_log = hs @ ws.T + bs, ht @ wt[:11].T + bt[:11]
        expect, _, _ = oracle_adakd(s_log, t_log, labels, name, ratio=ratio, idts=idts, **PARAMS.get(name, {}))
        assert fus[0].item() == pytest.approx(expect, rel=1e-10)


def test_fused_cache_float32_matches_reference_and_telemetry():
    # logits of moderate spread: saturated ones (Hellinger = 1 for many tokens) would make the
    # selection a float32 tie-break between two matmul orders
    hs, ws, bs, ht, wt, bt, labels = (x.float() * 0.3 if x.is_floating_point() else x
                                      for x in make_hidden(seed=32, V=50, H=8, Ht=9, L=20))
    results = {}
    for impl, mb in (("reference", 0.0), ("fused", 0.0), ("fused", 1.0)):
        obj = _objective("jsd", impl, ratio=0.7, idts=True, chunk=4)
        obj.logit_cache_mb = mb
        leaves = [x.clone().requires_grad_() for x in (hs, ws, bs)]
        loss, stats = obj(HiddenStates(leaves[0], leaves[1], leaves[2]), HiddenStates(ht, wt, bt), labels,
                          telemetry=True)
        loss.backward()
        results[(impl, mb)] = [loss.detach()] + [x.grad for x in leaves], stats["_tensors"]
    ref, tel_ref = results[("reference", 0.0)]
    for key in (("fused", 0.0), ("fused", 1.0)):
        out, tel = results[key]
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert torch.equal(tel["kept_index"], tel_ref["kept_index"])
        for name in ("tau", "token_loss", "entropy_before", "entropy_after", "difficulty"):
            torch.testing.assert_close(tel[name], tel_ref[name], rtol=1e-5, atol=1e-6)


def test_full_cache_means_no_recomputation_in_pass_two(monkeypatch):
    """With room for every kept token, the LM heads run once per valid token (pass 1 only)."""
    hs, ws, bs, ht, wt, bt, labels = make_hidden(seed=33, V=11)
    n_valid = int((labels != -100).sum())
    rows = {"s": 0, "t": 0}
    real_s, real_t = HiddenRows._student, HiddenRows._teacher

    def count(side, real):
        def f(self, ch):
            rows[side] += ch.index.numel()
            return real(self, ch)

        return f

    monkeypatch.setattr(HiddenRows, "_student", count("s", real_s))
    monkeypatch.setattr(HiddenRows, "_teacher", count("t", real_t))
    _run_hidden(_fused("rkl", 1.0, ratio=0.6, idts=True), hs, ws, bs, ht, wt, bt, labels)
    assert rows == {"s": n_valid, "t": n_valid}
    rows.update(s=0, t=0)
    _run_hidden(_fused("rkl", 0.0, ratio=0.6, idts=True), hs, ws, bs, ht, wt, bt, labels)
    k = math.floor(0.6 * n_valid)
    assert rows == {"s": n_valid + k, "t": n_valid + k}


@pytest.mark.parametrize("seed", range(6))
def test_logit_cache_holds_the_top_scored_tokens(seed):
    """Offered chunk by chunk, the cache ends holding the tokens `select_tokens` would keep."""
    g = torch.Generator().manual_seed(seed)
    n, v, c = 37, 3, 5
    scores = torch.randint(0, 6, (n,), generator=g).double()  # many ties
    if seed % 2:
        scores = torch.rand(n, generator=g, dtype=torch.float64)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64)
    index = torch.arange(n) * 2 + 1  # flat token ids, ascending, not contiguous
    # chunk sizes that straddle the point where the cache fills, then one that would fit in order again
    sizes = [c] * 6 + [3, 1, 1, 1, 1]
    assert sum(sizes) == n
    for slots in (1, 4, 11, 31, 32, n):
        cache = LogitCache(slots, 2 * n + 2, v, (torch.float64, torch.float64), torch.device("cpu"))
        lo = 0
        for size in sizes:
            part = slice(lo, lo + size)
            cache.offer(index[part], (logits[part], -logits[part]), scores[part])
            lo += size
        expect = index[select_tokens(scores, slots)]
        held = cache.token[cache.token >= 0].sort().values
        assert torch.equal(held, expect)
        # and the rows it gives back are those tokens' rows; others are computed
        ch = Chunk(index, 0, None)
        out = cache.rows(0, ch, lambda ch_: torch.full((ch_.index.numel(), v), 7.0, dtype=torch.float64))
        hit = torch.isin(index, expect)
        torch.testing.assert_close(out[hit], logits[hit], rtol=0, atol=0)
        assert bool((out[~hit] == 7.0).all())
        teacher = cache.rows(1, ch, lambda ch_: torch.zeros(ch_.index.numel(), v, dtype=torch.float64))
        torch.testing.assert_close(teacher[hit], -logits[hit], rtol=0, atol=0)
        # the slot map is consistent: every held token's slot holds it
        held_slots = cache.slot_of[expect]
        assert torch.equal(cache.token[held_slots], expect)
        assert int((cache.slot_of >= 0).sum()) == slots
