"""Pre-flight memory arithmetic on known sizes, refusals with a fix, and the gpu_check script's CPU smoke mode."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from adakd.assemble.preflight import (
    ACT_FACTOR,
    OVERHEAD,
    GiB,
    Plan,
    PreflightError,
    Role,
    check,
    check_run,
    estimate,
    free_bytes,
    lora_params,
    plan_from_config,
    shape_from_config,
    total,
)

from .helpers_tiny import tiny_tokenizer


def gpt2(n_layer=12, n_embd=768, n_head=12):
    from transformers import GPT2Config
    return shape_from_config(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head))


# ------------------------------------------------------------------------------------------ parameter counts
def test_parameter_counts_of_known_models():
    assert gpt2().n_params == 124_439_808                    # GPT-2 base (tied head)
    assert gpt2(48, 1600, 25).n_params == 1_557_611_200      # GPT-2 XL
    smollm2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
               "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    assert shape_from_config(smollm2).n_params == 134_515_008   # SmolLM2-135M (counted on the converted model)
    qwen2_7b = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                "tie_word_embeddings": False}
    assert shape_from_config(qwen2_7b).n_params == 7_615_616_512   # Qwen2-7B's published count


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_counts_match_instantiated_models(kind):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    cls, mcls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = cls(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=kind == "qwen2")
    model = mcls(cfg)
    shape = shape_from_config(cfg)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    from adakd.models.lora import apply_lora
    from adakd.models.pruning import prune_layers
    assert shape.pruned(2).n_params == sum(p.numel() for p in prune_layers(model, keep_layers=[0, 2]).parameters())
    peft = apply_lora(model, {"r": 4})
    assert lora_params(shape, 4) == sum(p.numel() for p in peft.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- arithmetic
def _plan(**kw):
    st = Role(shape=gpt2(), dtype_bytes=4, device="cuda:0", trainable=True)
    te = Role(shape=gpt2(48, 1600, 25), dtype_bytes=2, device="cuda:0")
    base = dict(stage="train", student=st, teacher=te, micro_batch=8, global_batch=128, max_len=512,
                max_prompt_len=256, amp_bytes=2, loss_impl="chunked", chunk=1024)
    base.update(kw)
    return Plan(**base)


def test_component_arithmetic():
    p = _plan()
    est = estimate(p)["cuda:0"]
    n_s, n_t = 124_439_808, 1_557_611_200
    assert est["weights"] == n_s * 4 + n_t * 2
    assert est["gradients"] == n_s * 4
    assert est["optimizer"] == n_s * 8                        # AdamW: two fp32 states
    tokens = 8 * 512
    student_act = 12 * tokens * 768 * ACT_FACTOR              # bf16 autocast: 16-bit activations
    teacher_act = tokens * 1600 * ACT_FACTOR + tokens * 1600 * 2
    assert est["activations"] == student_act + teacher_act
    n_resp, v = 8 * 256, 50257
    assert est["logits"] == n_resp * v * 2 * 2 + min(n_resp, 1024) * v * 4 * 6 + n_resp * v * 2
    assert est["overhead"] == OVERHEAD["cuda"]
    # checkpointing keeps only the block inputs (+ one block); FSDP splits the student's states
    ck = estimate(dataclasses.replace(p, student=dataclasses.replace(p.student, checkpointing=True)))["cuda:0"]
    assert ck["activations"] == 12 * tokens * 768 * 2 + tokens * 768 * ACT_FACTOR + teacher_act
    fs = estimate(dataclasses.replace(p, fsdp=True, world_size=4))["cuda:0"]
    assert fs["optimizer"] == n_s * 8 / 4 and fs["gradients"] == n_s * 4 / 4
    lo = estimate(dataclasses.replace(p, student=dataclasses.replace(p.student, lora_r=16)))["cuda:0"]
    assert lo["optimizer"] == lora_params(p.student.shape, 16) * 8


def test_fused_kd_counts_its_logit_cache():
    from adakd.kd.objective.logit_cache import auto_budget_bytes
    v = 50257
    n_resp = 8 * 2048                                         # long answers: the budget binds
    fused = estimate(_plan(loss_impl="fused", max_len=2304))["cuda:0"]
    # bf16 hidden states: 2-byte rows, held with dL/dW (the budget is smaller by it)
    want = auto_budget_bytes(n_resp, v, 768, 1024, grad_bytes=4, hidden_bytes=2, compute_bytes=4, with_weight_grad=True)
    assert 0 < want < n_resp * v * 2 * 2 and fused["logit_cache"] == want
    assert fused["logits"] == 1024 * v * 4 * 6
    n_resp = 8 * 256                                          # short ones: two rows per response token bind
    assert estimate(_plan(loss_impl="fused"))["cuda:0"]["logit_cache"] == n_resp * v * 2 * 2
    assert estimate(_plan(loss_impl="fused", logit_cache_mb=64.0))["cuda:0"]["logit_cache"] == 64 * 2 ** 20
    assert "logit_cache" not in estimate(_plan())["cuda:0"]                                   # chunked: no cache
    assert "logit_cache" not in estimate(_plan(loss_impl="fused", teacher=None))["cuda:0"]    # SFT: no cache


def test_teacher_on_another_device_is_counted_there():
    p = _plan()
    p = dataclasses.replace(p, teacher=dataclasses.replace(p.teacher, device="cuda:1"))
    est = estimate(p)
    assert est["cuda:1"]["weights"] == 1_557_611_200 * 2
    assert est["cuda:0"]["weights"] == 124_439_808 * 4


def test_refusal_names_what_fits():
    p = _plan(micro_batch=32)
    need = total(estimate(p))
    rep = check(p, free={"cuda:0": int(need * 0.8)}, cuda_devices=1)
    assert not rep.ok and rep.suggestions
    assert "does not fit" in rep.message and "train.preflight=false" in rep.message
    text = " ".join(rep.suggestions)
    assert "train.micro_batch=" in text and "gradient accumulation keeps train.global_batch=128" in text
    for s in rep.suggestions:     # every suggestion really fits
        assert "about" in s
    ok = check(p, free={"cuda:0": int(need * 2)}, cuda_devices=1)
    assert ok.ok and not ok.warn and not ok.suggestions
    near = check(p, free={"cuda:0": int(need / 0.95)}, margin=0.9, cuda_devices=1)
    assert near.ok and near.warn


def test_nothing_alone_fits_then_all_together_or_nothing():
    p = _plan(micro_batch=1, global_batch=1)
    tiny = check(p, free={"cuda:0": 1 * GiB}, cuda_devices=1)
    assert not tiny.ok and "nothing tried fits" in tiny.suggestions[-1]


def test_cpu_free_memory_is_read():
    assert free_bytes("cpu") > 0


# --------------------------------------------------------------------------------------------- from config
def _cfg(**train):
    from adakd.schema import RunConfig
    cfg = OmegaConf.structured(RunConfig)
    cfg.model.teacher.arch = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
    cfg.model.student.arch = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}
    for k, v in train.items():
        cfg.train[k] = v
    return cfg


def test_plan_from_config_and_runner_check_on_cpu():
    tok = tiny_tokenizer(300)
    cfg = _cfg()
    plan = plan_from_config(cfg, tok, torch.device("cpu"))
    assert plan.teacher.shape.vocab == len(tok) and plan.student.shape.n_layers == 1
    assert plan.amp_bytes == 4 and plan.student.dtype_bytes == 4
    rep = check_run(cfg, tok, torch.device("cpu"))
    assert rep is not None and rep.ok
    assert plan_from_config(cfg, tok, torch.device("cpu"), distils=False).teacher is None   # SFT
    plan = plan_from_config(cfg, tok, torch.device("cpu"), trains=False, evaluates_teacher=True)
    assert plan.stage == "eval" and plan.student is None and plan.teacher is not None


def test_runner_check_refuses_a_pair_that_cannot_fit(monkeypatch):
    from adakd.assemble import preflight
    monkeypatch.setattr(preflight, "free_bytes", lambda d: 256 * 1024 ** 2)
    with pytest.raises(PreflightError, match="what would make it fit|nothing tried fits"):
        check_run(_cfg(), tiny_tokenizer(300), torch.device("cpu"))


def test_pruned_student_shape_from_the_teacher():
    cfg = _cfg()
    cfg.model.teacher.arch = {"n_layer": 6, "n_embd": 32, "n_head": 2, "n_positions": 64}
    cfg.model.student.source, cfg.model.student.every_k = "pruned", 2
    plan = plan_from_config(cfg, tiny_tokenizer(300), torch.device("cpu"))
    assert plan.student.shape.n_layers == 3
    assert plan.student.shape.n_params == plan.teacher.shape.pruned(3).n_params


# ------------------------------------------------------------------------------------------------ gpu_check
@pytest.mark.integration
def test_gpu_check_cpu_smoke():
    r = subprocess.run([sys.executable, "-m", "adakd.bench.gpu_check", "--cpu-smoke", "--steps", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["mode"] == "cpu-smoke"
    assert {(row["loss"], row["impl"]) for row in out["rows"]} == {
        ("kd", "chunked"), ("adakd", "chunked"), ("kd", "fused"), ("adakd", "fused")}
    assert all(row["tokens_per_s"] > 0 for row in out["rows"])
    assert set(out["adakd_over_kd_step_time"]) == {"chunked", "fused"}
