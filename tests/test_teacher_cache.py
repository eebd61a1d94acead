"""The top-k teacher cache: the sparse (k + 1)-bucket divergences and metrics, the on-disk cache, the
cached trainer, and the refusal for on-policy recipes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adakd.kd.adaptive import DifficultyMetric
from adakd.kd.losses import DIVERGENCES, per_token
from adakd.kd.adaptive.difficulty import BucketMetric
from adakd.kd.losses.sparse import dense_teacher, topk_from_logits
from adakd.kd.losses.sparse import per_token as sparse_per_token
from adakd.kd.objective import build_objective
from adakd.schema import AdakdConfig, MethodConfig

from .compose import compose_cfg
from .helpers_tiny import tiny_gpt2, tiny_tokenizer

F64 = torch.float64


def logits(n=24, v=40, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=F64) * scale, torch.randn(n, v, generator=g, dtype=F64) * scale


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_k_equal_v_minus_1_is_exact(name):
    """With one token left in the tail, the k + 1 buckets are the full distribution: every divergence equals
    the dense one, with or without temperatures, for every tail mode."""
    s, t = logits()
    top = topk_from_logits(t, t.shape[-1] - 1)
    assert torch.allclose(sparse_per_token(name, s, top), per_token(name, s, t), atol=1e-12)
    tau = torch.linspace(0.6, 1.6, s.shape[0], dtype=F64)
    dense = per_token(name, s / tau[:, None], t / tau[:, None]) * tau.square()
    for tail in ("student", "uniform", "atom"):
        got = sparse_per_token(name, s, top, tau=tau, tail=tail)
        assert torch.allclose(got, dense, atol=1e-10), tail


@pytest.mark.parametrize("metric", ["hellinger", "fkl", "rkl", "jsd", "bhattacharyya", "entropy", "ce", "nmtkd"])
def test_metrics_on_buckets_exact_at_k_equal_v_minus_1(metric):
    s, t = logits()
    labels = torch.arange(s.shape[0]) % s.shape[1]
    top = topk_from_logits(t, t.shape[-1] - 1)
    m = DifficultyMetric(metric)
    assert torch.allclose(BucketMetric(m).rows(s, top, labels), m.rows(s, t, labels), atol=1e-10)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl"])
def test_buckets_never_exceed_the_full_divergence(name):
    """Bucketing is a coarse-graining: f-divergences can only shrink (data processing inequality)."""
    s, t = logits(v=60)
    full = per_token(name, s, t)
    for k in (1, 4, 16, 59):
        assert (sparse_per_token(name, s, topk_from_logits(t, k)) <= full + 1e-12).all()
    hel = DifficultyMetric("hellinger")
    assert (BucketMetric(hel).rows(s, topk_from_logits(t, 4)) <= hel.rows(s, t) + 1e-12).all()


def test_gradient_reaches_every_student_logit_and_is_finite():
    s, t = logits(n=6, v=30)
    s = s.clone().requires_grad_(True)
    top = topk_from_logits(t, 5)
    sparse_per_token("rkl", s, top, tau=torch.full((6,), 0.7, dtype=F64)).sum().backward()
    assert torch.isfinite(s.grad).all()
    outside = torch.ones_like(s, dtype=torch.bool).scatter(-1, top.ids, False)
    assert (s.grad[outside].abs() > 0).any()   # the tail bucket spreads its gradient over the non-top-k
    # -inf student logits and an empty teacher tail stay finite
    s2 = s.detach().clone()
    s2[:, -3:] = float("-inf")
    s2.requires_grad_(True)
    sparse_per_token("fkl", s2, topk_from_logits(t, 29)).sum().backward()
    assert torch.isfinite(s2.grad).all()


def test_objective_with_topk_teacher_matches_dense_with_latf_and_idts():
    s, t = logits(n=30, v=40)
    s, t = s.view(2, 15, 40), t.view(2, 15, 40)
    labels = torch.randint(0, 40, (2, 15))
    labels[0, :3] = -100
    top = topk_from_logits(t, 39)
    for div, form in (("rkl", "dense"), ("rkl", "buckets"), ("jsd", "dense"), ("srkl", "buckets")):
        a = AdakdConfig(ratio_schedule="fixed", ratio_end=0.6)
        o1, o2 = build_objective(MethodConfig(divergence=div), a, total_steps=10), \
            build_objective(MethodConfig(divergence=div), a, total_steps=10, teacher_cache={"form": form})
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        l1, st1 = o1(s1, t, labels, telemetry=True)
        l2, st2 = o2(s2, top, labels, telemetry=True)
        l1.backward()
        l2.backward()
        assert float(l2.detach()) == pytest.approx(float(l1.detach()), rel=1e-12)
        assert torch.allclose(s1.grad, s2.grad, atol=1e-14)
        assert torch.equal(st1["_tensors"]["kept_index"], st2["_tensors"]["kept_index"])
        assert st1["n_kept"] == st2["n_kept"] == 16


def test_dense_form_is_the_dense_loss_on_the_rebuilt_teacher():
    """form='dense' at small k: exactly the ordinary objective run on `dense_teacher` rows."""
    s, t = logits(n=20, v=30)
    s, t = s.view(2, 10, 30), t.view(2, 10, 30)
    labels = torch.randint(0, 30, (2, 10))
    top = topk_from_logits(t, 5)
    rebuilt = dense_teacher(top.flat(), 30, F64).view(2, 10, 30)
    a = AdakdConfig(ratio_schedule="fixed", ratio_end=0.5)
    o1, o2 = (build_objective(MethodConfig(divergence="akl"), a, total_steps=1) for _ in range(2))
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    l1, _ = o1(s1, rebuilt, labels)
    l2, _ = o2(s2, top, labels)
    l1.backward()
    l2.backward()
    assert float(l2.detach()) == pytest.approx(float(l1.detach()), rel=1e-12)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-14)


def test_topk_teacher_refuses_logit_standardisation_and_bad_ids():
    s, t = logits(n=4, v=10)
    labels = torch.zeros(1, 4, dtype=torch.long)
    o = build_objective(MethodConfig(), AdakdConfig(latf=False, idts=False, temperature="logit_std"), total_steps=1)
    with pytest.raises(ValueError, match="logit_std"):
        o(s[None], topk_from_logits(t, 3).unsqueeze(0), labels)
    o = build_objective(MethodConfig(), AdakdConfig(), total_steps=1)
    bad = topk_from_logits(torch.randn(4, 20, dtype=F64), 3)
    with pytest.raises(ValueError, match="vocabulary"):
        o(s[None], bad.unsqueeze(0), labels)


def test_dense_reconstruction_keeps_the_top_k_and_the_tail_mass():
    _, t = logits(n=3, v=12)
    top = topk_from_logits(t, 4)
    d = dense_teacher(top, 12, F64)
    assert torch.allclose(d.exp().sum(-1), torch.ones(3, dtype=F64))
    assert torch.allclose(d.gather(-1, top.ids), top.logprobs)


# ------------------------------------------------------------------------------------------ the cache
@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pair(tok):
    return (tiny_gpt2(len(tok), seed=5, n_layer=2, n_embd=32, n_positions=96),
            tiny_gpt2(len(tok), seed=6, n_layer=1, n_embd=32, n_positions=96))


@pytest.fixture(scope="module")
def examples(tok):
    from adakd.data import encode_example
    out = []
    for i in range(10):
        e = encode_example(tok, f"Question {i}: name {i % 3} colors?\nAnswer:", f" red and blue {i}",
                           max_prompt_len=40, max_len=80)
        out.append(e)
    return out + [dict(out[0])]   # a duplicate sequence is stored once


def test_cache_rows_are_the_live_teachers_top_k(tmp_path, tok, pair, examples):
    from adakd.data import collate_train
    from adakd.training.topk_cache import TeacherCache, build, bytes_per_token
    from adakd.training.forward import head_logits, hidden_at, response_positions

    teacher, _ = pair
    v = len(tok)
    path = build(teacher, examples, tmp_path / "c", k=16, vocab=v, pad_id=tok.pad_token_id, batch_size=3)
    cache = TeacherCache(path)
    assert len(cache) == 10
    meta = json.loads((path / "meta.json").read_text())
    assert meta["bytes_per_token"] == bytes_per_token(16) == 100
    assert cache.ids.shape == (cache.n_tokens, 16) and cache.logprobs.dtype == np.float16
    b = collate_train(examples[3:7], tok.pad_token_id)
    rows = cache.rows_for_batch(b)
    _, mask = response_positions(b["labels"])
    with torch.no_grad():
        live = topk_from_logits(head_logits(teacher, hidden_at(teacher, b["input_ids"], b["attention_mask"], mask)), 16)
    assert rows.ids.shape == live.ids.shape == (int(mask.sum()), 16)
    same = (rows.ids == live.ids).float().mean()
    assert same > 0.99   # ties under fp16-free float32 ordering only
    assert torch.allclose(rows.logprobs, live.logprobs.float(), atol=2e-2)
    assert torch.allclose(rows.tail, live.tail.float(), atol=1e-5)
    # content-addressed: the order of the rows in a batch does not matter
    b2 = collate_train(examples[6:2:-1], tok.pad_token_id)
    assert cache.rows_for_batch(b2).tail.sum() == pytest.approx(float(rows.tail.sum()), rel=1e-6)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.rows_of([([1, 2, 3], [-100, 2, 3])])
    # a second build of the same inputs is the same key; a different k another
    from adakd.training.topk_cache import cache_key
    assert cache_key("t", examples, 16, v) == cache_key("t", list(reversed(examples)), 16, v) != \
        cache_key("t", examples, 8, v)


def test_cached_trainer_matches_the_live_teacher(tmp_path, tok, pair, examples):
    """One loss evaluation with the CachedTeacher source at k = V - 1 equals the live teacher's (up to the
    fp16 storage of the log-probabilities); with AdaKD on (LATF fixed 0.7 + IDTS)."""
    from omegaconf import OmegaConf

    from adakd.data import collate_train
    from adakd.schema import TrainConfig
    from adakd.training.teachers import CachedTeacher
    from adakd.training.topk_cache import TeacherCache, build
    from adakd.tracking import NullLogger
    from adakd.training.loop import Trainer
    from adakd.training.settings import train_settings

    teacher, student = pair
    v = len(tok)
    cache = TeacherCache(build(teacher, examples, tmp_path / "c", k=v - 1, vocab=v, pad_id=tok.pad_token_id))
    tcfg = OmegaConf.structured(TrainConfig(global_batch=4, micro_batch=4, steps=1))
    method = OmegaConf.structured(MethodConfig(divergence="rkl"))
    acfg = AdakdConfig(ratio_schedule="fixed", ratio_end=0.7)
    settings = train_settings(tcfg, total_steps=1, method=method, progress=False)
    common = {"student": student, "train_data": examples, "collate": lambda b: collate_train(b, tok.pad_token_id),
              "logger": NullLogger(), "device": torch.device("cpu")}
    live = Trainer(settings, teacher=teacher, objective=build_objective(method, acfg, total_steps=1),
                   run_dir=tmp_path / "a", **common)
    batch = collate_train(examples[:4], tok.pad_token_id)
    _, l1, s1 = live.losses(batch, telemetry=False)
    for form in ("dense", "buckets"):
        cached = Trainer(settings, teacher=CachedTeacher(cache), run_dir=tmp_path / form,
                         objective=build_objective(method, acfg, total_steps=1, teacher_cache={"form": form}),
                         **common)
        assert cached.teacher.model is None and cached.kd_ratio == 1.0
        _, l2, s2 = cached.losses(batch, telemetry=False)
        assert float(l2.detach()) == pytest.approx(float(l1.detach()), rel=2e-3)
        assert s1["n_kept"] == s2["n_kept"]


@pytest.mark.integration
def test_teacher_cache_end_to_end_smoke(tmp_path):
    """experiment=smoke with the cache: built once, reused by a second run (another seed), refused for gkd."""
    from adakd.experiment import runner
    from adakd.experiment.config_check import ConfigError

    base = ["experiment=smoke", f"run.output_root={tmp_path}", "run.progress=false", "logger=none",
            "train.threads=1", "train.steps=3", "eval.max_samples=4", "dataset.n_train=48",
            "train.teacher_cache.enabled=true", "train.teacher_cache.k=32"]
    m = runner.run(compose_cfg(base))
    assert m["status"] == "ok"
    def built():   # the caches, not their build locks (.<key>.lock)
        return [p for p in (tmp_path / "cache" / "teacher_topk").iterdir() if not p.name.startswith(".")]
    caches = built()
    assert len(caches) == 1
    stamp = (caches[0] / "ids.npy").stat().st_mtime_ns
    runner.run(compose_cfg(base + ["train.seed=11", "method=fkl"]))
    assert built() == caches
    assert (caches[0] / "ids.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="cannot be used with method.recipe=gkd"):
        runner.run(compose_cfg(base + ["method=gkd"]))
