"""The fused path's fast parts, each against its straightforward version:
- jsd's closed-form gradient == autograd through `per_token` (values bit-identical), also when it
  overwrites its inputs and works in scratch buffers (as the fused path calls it), and so for rkl / fkl;
- the pass-1 logit cache (`LogitCache`): fused with any cache size (none, some, exactly the kept
  tokens, more, the default derived from the memory floor) == reference, values and gradients, with
  LATF + IDTS, several divergences, biases, padded vocabularies and masked tokens; and the float64
  oracle of docs/method.md; the same with the elementwise work in several row blocks per chunk, and with
  bf16 logits (the cache then in bf16: dL/dW accumulated chunk by chunk);
- the memory plan: the floor and the default budget, and dL/dW never allocated while the cache holds
  its teacher rows."""

from __future__ import annotations

import math

import pytest
import torch

from adakd.kd.losses import build_divergence
from adakd.kd.objective import HiddenStates, select_tokens
from adakd.kd.losses.base import log_probs
from adakd.kd.objective import fused
from adakd.kd.objective.logit_cache import LogitCache, auto_budget_bytes, floor_bytes
from adakd.kd.objective.rows import HiddenRows, _linear

from adakd.assemble.identity import semantic_config

from .compose import compose_cfg
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
@pytest.mark.parametrize("slots", [0, 1, 5, "k", 40, "auto"])
def test_fused_with_any_cache_size_equals_reference(name, slots):
    hs, ws, bs, ht, wt, bt, labels = make_hidden(seed=31, V=11, Vt=12)
    for ratio, idts in [(0.6, True), (1.0, True), (0.45, False)]:
        n_valid = int((labels != -100).sum())
        k = max(1, math.floor(ratio * n_valid))
        n_slots = k if slots == "k" else slots
        mb = None if slots == "auto" else n_slots * _per_token_bytes(ws[:11], wt[:11]) / 2**20
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
    real_s, real_t = HiddenRows.student, HiddenRows.teacher

    def count(side, real):
        def f(self, ch, out=None):
            rows[side] += ch.index.numel()
            return real(self, ch, out)

        return f

    monkeypatch.setattr(HiddenRows, "student", count("s", real_s))
    monkeypatch.setattr(HiddenRows, "teacher", count("t", real_t))
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
        # and its slots hold those tokens' rows, both sides
        held_slots = cache.slot_of[expect]
        at = torch.searchsorted(index, expect)
        torch.testing.assert_close(cache.rows_by_side[0][held_slots], logits[at], rtol=0, atol=0)
        torch.testing.assert_close(cache.rows_by_side[1][held_slots], -logits[at], rtol=0, atol=0)
        # the slot map is consistent: every held token's slot holds it
        held_slots = cache.slot_of[expect]
        assert torch.equal(cache.token[held_slots], expect)
        assert int((cache.slot_of >= 0).sum()) == slots


# ------------------------------------------------------------------------------------------------
# the buffers the fused path works in: the same values as fresh ones
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_probs_in_place_and_into_scratch_are_bit_identical(dtype):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(9, 50, generator=g, dtype=torch.float64) * 4).to(dtype)
    x[0, 3] = -INF
    expect = torch.log_softmax(x, -1)
    scratch = torch.empty(12, 50, dtype=dtype)
    assert torch.equal(log_probs(x, dtype, out=scratch), expect)
    assert torch.equal(log_probs(x.to(torch.bfloat16), dtype, out=scratch),
                       torch.log_softmax(x.to(torch.bfloat16).to(dtype), -1))
    y = x.clone()
    out = log_probs(y, dtype, overwrite=True)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expect)


@pytest.mark.parametrize("name", ["jsd", "rkl", "fkl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_forms_with_overwrite_and_scratch_are_bit_identical(name, dtype):
    g = torch.Generator().manual_seed(8)
    s = (torch.randn(6, 30, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = (torch.randn(6, 30, generator=g, dtype=torch.float64) * 3).to(dtype)
    s[0, 1], t[1, 2] = -INF, -INF
    div = build_divergence(name, **PARAMS.get(name, {}))
    s0, t0 = s.clone(), t.clone()
    v_ref, g_ref = div.value_and_grad(s, t, scratch=(torch.empty(6, 30, dtype=dtype),) * 2 if name == "rkl" else None)
    assert torch.equal(s, s0) and torch.equal(t, t0)  # no overwrite: inputs left intact
    v_ref, g_ref = div.value_and_grad(s, t)
    s2, t2 = s.clone(), t.clone()
    scratch = (torch.empty(8, 30, dtype=dtype), torch.empty(8, 30, dtype=dtype))
    v, grad = div.value_and_grad(s2, t2, overwrite=(True, True), scratch=scratch)
    assert torch.equal(v, v_ref) and torch.equal(grad, g_ref)
    assert grad.data_ptr() == s2.data_ptr()  # the gradient takes the student rows' place


def test_linear_into_a_buffer_equals_f_linear():
    g = torch.Generator().manual_seed(9)
    h, w, b = (torch.randn(40, 16, generator=g), torch.randn(70, 16, generator=g), torch.randn(70, generator=g))
    out = torch.empty(64, 70)
    for bias in (None, b):
        expect = torch.nn.functional.linear(h, w, bias)
        got = _linear(h, w, bias, out)
        assert got.data_ptr() == out.data_ptr() and torch.equal(got, expect)


@pytest.mark.parametrize("scratch_rows", [2, 5])
@pytest.mark.parametrize("slots", [0, 3, "auto", 40])
@pytest.mark.parametrize("name", ["jsd", "rkl", "fkl"])
def test_fused_in_row_blocks_equals_reference(monkeypatch, scratch_rows, slots, name):
    """Chunks of 7 tokens, elementwise work in blocks of 2 or 5 rows: per-token values and gradients as the
    reference path computes them; the float64 oracle."""
    monkeypatch.setattr(fused, "SCRATCH_ROWS", scratch_rows)
    hs, ws, bs, ht, wt, bt, labels = make_hidden(B=2, L=16, seed=34, V=13, Vt=14)
    per_token = _per_token_bytes(ws, wt[:13]) / 2**20
    for ratio, idts in [(0.7, True), (1.0, False)]:
        obj = _objective(name, "fused", ratio=ratio, idts=idts, chunk=7)
        obj.logit_cache_mb = None if slots == "auto" else slots * per_token
        fus, st_fus = _run_hidden(obj, hs, ws, bs, ht, wt, bt, labels)
        ref, st_ref = _run_hidden(
            _objective(name, "reference", ratio=ratio, idts=idts, chunk=7), hs, ws, bs, ht, wt, bt, labels
        )
        for a, b in zip(fus, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        assert st_fus == pytest.approx(st_ref, rel=1e-10, abs=1e-13)
        s_log, t_log = hs @ ws.T + bs, ht @ wt[:13].T + bt[:13]
        expect, _, _ = oracle_adakd(s_log, t_log, labels, name, ratio=ratio, idts=idts, **PARAMS.get(name, {}))
        assert fus[0].item() == pytest.approx(expect, rel=1e-10)


def test_fused_with_bf16_logits_keeps_the_cache_in_bf16_and_matches():
    """bf16 hidden states and heads: the logits (and the cache) are bf16, the loss float32; the gradient rows
    cannot take the bf16 student rows' place, so dL/dW is summed chunk by chunk. Same values as without
    the cache and as the reference path (which rounds the logits to bf16 the same way)."""
    hs, ws, bs, ht, wt, bt, labels = (x.to(torch.bfloat16) if x.is_floating_point() else x
                                      for x in make_hidden(B=2, L=12, seed=35, V=40, H=8, Ht=9))
    results = []
    for impl, mb in (("reference", 0.0), ("fused", 0.0), ("fused", 1.0), ("fused", None)):
        obj = _objective("jsd", impl, ratio=0.7, idts=True, chunk=5)
        obj.logit_cache_mb = mb
        results.append(_run_hidden(obj, hs, ws, bs, ht, wt, bt, labels)[0])
    for out in results[1:]:
        torch.testing.assert_close(out[0], results[0][0], rtol=1e-6, atol=0)  # the loss, in float32
        for a, b in zip(out[1:], results[0][1:], strict=True):  # the reference rounds dL/dlogits to bf16
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=1e-2 * float(b.float().abs().max()))
        for a, b in zip(out, results[1], strict=True):  # with and without the cache: a bf16 ulp at most
            torch.testing.assert_close(a.float(), b.float(), rtol=8e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# the memory plan
# ------------------------------------------------------------------------------------------------
def test_floor_and_default_budget_at_the_benchmark_shape():
    n, v, h, chunk = 2048, 50257, 768, 128
    mib = 2**20
    floor = floor_bytes(n, v, h, chunk)
    assert floor == v * h * 4 + n * h * 4 + 3 * chunk * v * 4
    assert 226 < floor / mib < 228  # the "about 230 MB"
    budget = auto_budget_bytes(n, v, h, chunk)
    # held at the end of pass 1: the cache, dL/dhidden, the chunk's rows and the score's buffers
    assert budget + n * h * 4 + 4 * chunk * v * 4 == 2 * floor
    # a bf16 cache is held with dL/dW: smaller by it
    assert auto_budget_bytes(n, v, h, chunk, with_weight_grad=True) == budget - v * h * 4
    assert auto_budget_bytes(4, 10, 2, 100) >= 0


def test_weight_gradient_is_allocated_after_the_cached_teacher_rows_are_freed(monkeypatch):
    hs, ws, bs, ht, wt, bt, labels = make_hidden(B=2, L=16, seed=36, V=13)
    seen = []
    real_alloc, real_init = fused.StudentGrads._alloc_w, LogitCache.__init__
    caches = []

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        caches.append(self)

    def alloc(self):
        seen.append([side is None for side in caches[-1].rows_by_side] if caches else None)
        real_alloc(self)

    monkeypatch.setattr(LogitCache, "__init__", init)
    monkeypatch.setattr(fused.StudentGrads, "_alloc_w", alloc)
    obj = _objective("jsd", "fused", ratio=0.6, idts=True, chunk=4)
    obj.logit_cache_mb = 5 * _per_token_bytes(ws, wt) / 2**20
    _run_hidden(obj, hs, ws, bs, ht, wt, bt, labels)
    assert seen == [[False, True]]  # once, with the student rows (the gradient rows by then) still held
    obj.logit_cache_mb = 0.0  # no cache: allocated up front, before any rows exist
    caches.clear(), seen.clear()
    _run_hidden(obj, hs, ws, bs, ht, wt, bt, labels)
    assert seen == [None]


def test_the_cache_budget_is_not_part_of_the_run_identity():
    """Speed and memory only: any budget, the default (derived from the floor) included, names the run
    directory as the former default of 640 MiB did."""
    names = {
        str(semantic_config(compose_cfg(["experiment=smoke", *extra]))["train"])
        for extra in ([], ["train.fused_logit_cache_mb=0"], ["train.fused_logit_cache_mb=640"])
    }
    assert len(names) == 1 and "'fused_logit_cache_mb': 640.0" in names.pop()
