"""`python -m adakd.bench.generate_batched` at toy size, and its transformers side sampling what it says."""
from __future__ import annotations

import torch

from adakd.bench import generate_batched as bench


def test_bench_runs_at_toy_size(monkeypatch):
    monkeypatch.delenv("ADAKD_DATA_DIR", raising=False)
    args = bench.parse_args(["--n-prompts", "5", "--max-new-tokens", "3", "--batch-size", "2", "--n-layer", "1",
                             "--n-embd", "32", "--vocab", "300", "--max-prompt-len", "32"])
    res = bench.run(args)
    assert res["prompts"]["source"] == "synthetic" and res["settings"]["batches"] == 3
    for side in ("adakd_batched", "hf_generate_batched"):
        assert 0 < res[side]["tokens"] <= 5 * 3 and res[side]["tokens_per_s"] > 0
    assert res["ratios"]["tokens_per_s_adakd_over_hf"] > 0


def test_hf_side_counts_tokens_before_eos(monkeypatch):
    """Left padding of unequal prompts; each row's count stops at its first EOS."""

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    class Model:
        def generate(self, ids, attention_mask, **kw):
            assert kw["do_sample"] and kw["top_k"] == 0 and kw["top_p"] == 1.0 and kw["temperature"] == 1.0
            assert attention_mask.tolist() == [[0, 1], [1, 1]] and ids[0, 0] == 0  # left-padded
            new = torch.tensor([[5, 1, 6], [5, 6, 7]])
            return torch.cat([ids, new], dim=1)

    assert bench.hf_batched(Model(), Tok(), [[3], [4, 4]], 3, seed=0) == 1 + 3
