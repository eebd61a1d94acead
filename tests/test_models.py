"""Model pairs: layer pruning (GPT-2 and Llama-style), vocabulary alignment and tokenizer refusal, LoRA wiring,
checksummed local models, the offline SmolLM2 teacher (slow: needs `make models`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adakd.models import ModelLoadError, check_same_tokenizer, lm_parts, save_model
from adakd.models.pruning import PruningError, find_layers, layers_to_keep, prune_layers

from .helpers_tiny import tiny_gpt2, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def tiny_llama(n_layers: int = 4, vocab: int = 128, seed: int = 0, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _greedy(model, ids, n=6, use_cache=True):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          use_cache=use_cache, pad_token_id=0)


def _same_params(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------------ pruning
def test_layers_to_keep_rules():
    assert layers_to_keep(6, every_k=2) == [0, 2, 4]
    assert layers_to_keep(6, every_k=1) == list(range(6))
    assert layers_to_keep(6, keep_layers=[0, 2, -1]) == [0, 2, 5]
    for bad in ({}, {"keep_layers": [0], "every_k": 2}, {"keep_layers": []}, {"keep_layers": [0, 6]},
                {"keep_layers": [1, 1]}, {"keep_layers": [3, 1]}, {"every_k": 0}):
        with pytest.raises(PruningError):
            layers_to_keep(6, **bad)


def test_prune_gpt2_keeps_the_chosen_blocks_and_leaves_the_teacher_alone():
    teacher = tiny_gpt2(97, seed=1, n_layer=4, n_embd=32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = prune_layers(teacher, keep_layers=[0, 3])
    assert len(teacher.transformer.h) == 4 and teacher.config.n_layer == 4
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert len(student.transformer.h) == 2
    assert student.config.n_layer == student.config.num_hidden_layers == 2
    assert [b.attn.layer_idx for b in student.transformer.h] == [0, 1]
    assert _same_params(student.transformer.h[1], teacher.transformer.h[3])
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    # a copy, not shared storage; trainable; the head is still tied to the copied embeddings
    assert student.transformer.wte.weight.data_ptr() != teacher.transformer.wte.weight.data_ptr()
    assert all(p.requires_grad for p in student.parameters())
    assert student.lm_head.weight is student.transformer.wte.weight
    assert student.config.adakd_pruned_from == {"n_layers": 4, "keep_layers": [0, 3]}
    # KV cache indexes the new stack: cached greedy decoding == uncached
    student.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(_greedy(student, ids), _greedy(student, ids, use_cache=False))


def test_prune_llama_every_k_fixes_layer_idx_and_config():
    teacher = tiny_llama(n_layers=6)
    student = prune_layers(teacher, every_k=2)
    assert len(student.model.layers) == 3 and student.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    if getattr(student.config, "layer_types", None) is not None:
        assert len(student.config.layer_types) == 3
    assert _same_params(student.model.layers[2], teacher.model.layers[4])
    assert len(teacher.model.layers) == 6 and teacher.config.num_hidden_layers == 6
    student.eval()
    ids = torch.tensor([[3, 9, 4, 11, 7]])
    assert torch.equal(_greedy(student, ids), _greedy(student, ids, use_cache=False))
    # the pruned model computes exactly what the teacher's kept blocks compute
    manual = teacher.model.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    emb = teacher.model.rotary_emb(manual, pos)
    for i in (0, 2, 4):
        out = teacher.model.layers[i](manual, position_embeddings=emb, attention_mask=None, position_ids=pos)
        manual = out[0] if isinstance(out, tuple) else out
    want = teacher.lm_head(teacher.model.norm(manual))
    got = student(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_find_layers_refuses_a_model_without_blocks():
    with pytest.raises(PruningError, match="no transformer block list"):
        find_layers(torch.nn.Linear(2, 2))


def test_pipeline_builds_a_pruned_student_in_float32():
    from adakd.assemble.construct import build_model as _build
    teacher = tiny_llama(n_layers=4).to(torch.bfloat16)
    spec = OmegaConf.create({"source": "pruned", "keep_layers": [0, 3], "every_k": None, "dtype": "bfloat16"})
    student = _build(spec, tokenizer=None, teacher=teacher, device=torch.device("cpu"))
    assert len(student.model.layers) == 2
    assert {p.dtype for p in student.parameters()} == {torch.float32}   # fp32 on CPU
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------------------------- vocab / tokenizer
def test_vocab_padding_rows_are_aligned():
    from adakd.kd.objective import adakd_loss, align_vocab
    torch.manual_seed(0)
    s = torch.randn(2, 5, 151936 // 64)     # the Qwen2 case, scaled down: 2374 vs 2376 padding rows
    t = torch.randn(2, 5, 152064 // 64)
    a, b = align_vocab(s, t)
    assert a.shape[-1] == b.shape[-1] == s.shape[-1]
    labels = torch.randint(0, s.shape[-1], (2, 5))
    loss_padded, _ = adakd_loss(s, t, labels)
    loss_cut, _ = adakd_loss(s, t[..., : s.shape[-1]], labels)
    assert torch.isfinite(loss_padded) and torch.allclose(loss_padded, loss_cut)


def test_different_tokenizers_are_refused_naming_both_and_the_first_differing_id(tmp_path):
    """Tokenizers must agree on every id they share; one may only add ids past the other's end."""
    from transformers import PreTrainedTokenizerFast
    from adakd.assemble.identity import model_path
    from adakd.models import load_tokenizer
    a = tiny_tokenizer(300)
    check_same_tokenizer(a, a)
    a.save_pretrained(str(tmp_path / "a"))
    check_same_tokenizer(a, PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "a")))
    check_same_tokenizer(a, tiny_tokenizer(280))   # the same BPE, fewer merges: ids 0..279 agree
    world = load_tokenizer(model_path("builtin:world-student"))
    ta = {i: t for t, i in a.get_vocab().items()}
    tw = {i: t for t, i in world.get_vocab().items()}
    first = min(i for i in set(ta) & set(tw) if ta[i] != tw[i])
    with pytest.raises(ModelLoadError) as err:
        check_same_tokenizer(a, world, run_name="RUN-TOK", own_name="model.student.path=W")
    msg = str(err.value)
    assert "model.student.path=W and RUN-TOK use different tokenizers" in msg
    assert f"token id {first} is {tw[first]!r} in the first and {ta[first]!r} in the second" in msg


def test_a_model_with_fewer_vocabulary_rows_than_the_tokenizer_is_refused():
    """Vocabularies hundreds of entries apart are not padding: the smaller model lacks rows for real ids."""
    from adakd.assemble.construct import check_vocab_rows
    from adakd.models.loading import model_from_arch
    tok = tiny_tokenizer(300)
    arch = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
    check_vocab_rows(model_from_arch(arch, 300, 0, 0), tok, "m")
    check_vocab_rows(model_from_arch(arch, 320, 0, 0), tok, "m")   # padded rows: fine
    with pytest.raises(ModelLoadError, match="the model X has 280 vocabulary rows but the run's tokenizer has 300"):
        check_vocab_rows(model_from_arch(arch, 280, 0, 0), tok, "the model X")


def test_pipeline_refuses_a_student_with_another_tokenizer(tmp_path):
    from adakd.assemble.tokenizer import check_pair_tokenizers
    from adakd.assemble.context import Context
    from adakd.schema import RunConfig
    from adakd.assemble.identity import model_path
    from adakd.models import load_tokenizer
    teacher_tok = tiny_tokenizer(300)
    other = load_tokenizer(model_path("builtin:world-student"))   # another vocabulary
    teacher_tok.save_pretrained(str(tmp_path / "teacher"))
    other.save_pretrained(str(tmp_path / "student"))
    cfg = OmegaConf.structured(RunConfig)
    cfg.model.tokenizer = str(tmp_path / "teacher")
    cfg.model.teacher.source = cfg.model.student.source = "pretrained"
    cfg.model.teacher.path = str(tmp_path / "teacher")
    cfg.model.student.path = str(tmp_path / "student")
    with pytest.raises(ModelLoadError, match="model.student.path"):
        check_pair_tokenizers(cfg, teacher_tok, str(tmp_path / "teacher"), Context())
    cfg.model.student.path = str(tmp_path / "teacher")   # same tokenizer: accepted
    check_pair_tokenizers(cfg, teacher_tok, str(tmp_path / "teacher"), Context())


# ------------------------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_trains_only_adapters_and_lm_parts_sees_through_peft(arch):
    from adakd.models.lora import apply_lora, is_peft, merged
    from adakd.training.forward import head_logits, hidden_at
    base = tiny_gpt2(97, seed=0, n_layer=2, n_embd=32) if arch == "gpt2" else tiny_llama(n_layers=2)
    body0, head0 = lm_parts(base)
    model = apply_lora(base, {"r": 4, "alpha": 8, "dropout": 0.0})
    assert is_peft(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    body, head = lm_parts(model)
    assert head is head0 and type(body) is type(body0)
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    logits = head_logits(model, hidden_at(model, ids, torch.ones_like(ids), mask))
    torch.testing.assert_close(logits, model(ids).logits[0, :-1])
    logits.square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and grads <= set(trainable)
    # adapters merged into plain weights compute the same function
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    want = model(ids).logits
    plain = merged(model)
    assert not is_peft(plain)
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(ids).logits, want, rtol=1e-4, atol=1e-5)


def test_lora_refuses_unknown_settings():
    from adakd.models.lora import apply_lora
    with pytest.raises(ValueError, match="unknown LoRA setting"):
        apply_lora(tiny_llama(n_layers=1), {"r": 4, "rank": 8})


def test_get_student_with_lora_and_checkpointing():
    from adakd.assemble.student import get_student
    from adakd.schema import RunConfig
    tok = tiny_tokenizer(300)
    cfg = OmegaConf.structured(RunConfig)
    cfg.model.student.arch = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
    cfg.model.student.lora = {"r": 4}
    cfg.model.student.gradient_checkpointing = True
    model, info = get_student(cfg.model.student, tok, torch.device("cpu"), for_training=True)
    body = lm_parts(model)[0]
    assert getattr(body, "is_activation_checkpointing", None) or body.gradient_checkpointing
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_train < info["params"] / 10
    # a training step through the checkpointed, frozen-base model reaches the adapters
    from adakd.training.forward import head_logits, hidden_at
    model.train()
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    head_logits(model, hidden_at(model, ids, torch.ones_like(ids), mask)).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)


# --------------------------------------------------------------------------------- local models, dtype
def test_local_model_checksum_is_verified(tmp_path):
    from adakd.assemble.construct import build_model as _build
    model = tiny_gpt2(97, seed=0, n_layer=1, n_embd=32)
    save_model(model, None, tmp_path / "m")
    spec = OmegaConf.create({"source": "pretrained", "path": str(tmp_path / "m"), "dtype": "bfloat16",
                             "trust_remote_code": False})
    loaded = _build(spec, None, device=torch.device("cpu"))
    assert next(loaded.parameters()).dtype == torch.float32   # half precision is for CUDA
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        _build(spec, None, device=torch.device("cpu"))


def test_load_dtype_policy():
    from adakd.assemble.devices import load_dtype
    assert load_dtype("bfloat16", torch.device("cpu")) == "float32"
    assert load_dtype("bfloat16", torch.device("cuda")) == "bfloat16"
    assert load_dtype("float32", torch.device("cuda")) == "float32"


def test_teacher_recipe_hash_ignores_where_the_teacher_runs():
    from adakd.assemble.identity import teacher_key as teacher_recipe_hash
    from adakd.schema import RunConfig
    cfg = OmegaConf.structured(RunConfig)
    h = teacher_recipe_hash(cfg)
    cfg.model.teacher.device = "cuda:1"
    assert teacher_recipe_hash(cfg) == h
    cfg.model.teacher.dtype = "bfloat16"
    assert teacher_recipe_hash(cfg) != h


# --------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["gpt2", "qwen2", "openllama2", "smollm2", "smollm2-offline"])
def test_real_pair_configs_compose(name):
    try:
        from .compose import compose_cfg
    except ImportError:
        from compose import compose_cfg
    cfg = compose_cfg([f"model={name}"])
    assert cfg.model.name == name
    assert not cfg.model.teacher.trust_remote_code and not cfg.model.student.trust_remote_code
    if name in ("qwen2", "openllama2"):
        assert cfg.model.student.lora.r == 16
    if name == "smollm2-offline":
        assert cfg.model.student.source == "pruned" and cfg.model.student.every_k == 2
        assert cfg.model.teacher.path.endswith("models/smollm2-135m-instruct")


# -------------------------------------------------------------------------------- offline SmolLM2 (slow)
def test_find_gguf_without_the_package(monkeypatch):
    import importlib.util

    from adakd.models import gguf as prepare
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="make models"):
        prepare.find_gguf()


def _smollm2_dir() -> Path:
    d = Path(os.environ.get("ADAKD_MODELS_DIR", REPO / "outputs" / "models")) / "smollm2-135m-instruct"
    if not (d / "adakd_model.json").is_file():
        pytest.skip(f"{d} not prepared: run `make models`")
    return d


@pytest.mark.slow
def test_offline_smollm2_loads_verifies_and_prunes():
    from adakd.models import load_pretrained, load_tokenizer, verify_checksum
    d = _smollm2_dir()
    verify_checksum(d)
    tok = load_tokenizer(str(d))
    assert len(tok) == 49152 and tok.chat_template
    model = load_pretrained(str(d)).eval()
    assert model.config.num_hidden_layers == 30
    student = prune_layers(model, every_k=2).eval()
    assert student.config.num_hidden_layers == 15
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    s_out = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert s_out.shape[1] > ids.shape[1]
