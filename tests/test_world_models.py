"""`make world-models` (adakd.shipped.world_models) shrunk to seconds: the three model directories, loadable,
the fine-tuned teacher found by the pipeline's recipe hash, and the same checksums on a second build."""
from __future__ import annotations

import json

import pytest
import torch

from adakd.assemble.teacher import shipped_teacher
from adakd.shipped import world_models
from adakd.models import load_pretrained, load_tokenizer, train_bpe_tokenizer

MODELS = ("world-teacher-base", "world-student", "world-teacher")


def test_pack_makes_full_lm_sequences(tmp_path):
    tok = train_bpe_tokenizer(["a b c d e"] * 10, 300, tmp_path / "tok")
    examples = world_models.pack(tok, ["a b c", "d e"] * 20, 16)
    assert examples and all(len(e["input_ids"]) == 16 and e["labels"] == e["input_ids"] for e in examples)
    assert examples[0]["input_ids"].count(tok.eos_token_id) >= 2   # every passage ends with EOS


@pytest.mark.integration   # three trainings and the pipeline's teacher fine-tune: ~6-15 s
def test_quick_build_is_complete_loadable_and_deterministic(tmp_path):
    threads = torch.get_num_threads()
    try:
        runs = [world_models.build(tmp_path / f"out{i}", tmp_path / f"work{i}", threads=1, quick=True,
                                  progress=False) for i in (1, 2)]
        # a finished work directory is reused, stage by stage, into another destination
        again = world_models.build(tmp_path / "out3", tmp_path / "work1", threads=1, quick=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out1"
    for name in MODELS:
        d = out / name
        for f in ("model.safetensors", "tokenizer.json", "adakd_model.json", "config.json"):
            assert (d / f).is_file(), f"{d / f} missing"
        assert json.loads((d / "adakd_model.json").read_text())["sha256"] == runs[0]["sha256"][name]
    for name in world_models.BASES:
        assert load_pretrained(str(out / name)).config.vocab_size == len(load_tokenizer(str(out / name)))
        assert runs[0]["heldout_lm_loss"][name] > 0
    cfg = world_models.compose_world([*world_models.QUICK_OVERRIDES, f"model.teacher_asset={out / 'world-teacher'}"])
    assert shipped_teacher(cfg) is not None
    assert runs[0]["sha256"] == runs[1]["sha256"] == again["sha256"]
