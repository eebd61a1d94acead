"""Generation: batch-size and order invariance, exactness of the sampler, KV cache and left padding."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from adakd.data import render_prompt
from adakd.evaluation.generation import encode_prompts, _pick, example_seed, generate, generate_ids

from .helpers_tiny import tiny_gpt2, tiny_tokenizer

KW = {"max_new_tokens": 12, "max_prompt_len": 48, "progress": False}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt2(len(tok), seed=1, n_positions=128)


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    words = ["the", "dog", "cat", "runs", "apple", "red", "one", "two", "what", "why", "explain", "list",
             "name", "give"]
    out = []
    for i in range(20):
        instruction = " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))) + "?"
        context = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        out.append(render_prompt(instruction, context if i % 2 else ""))
    return out


def keys_for(prompts):
    return [f"ex:{i}" for i in range(len(prompts))]


def test_same_predictions_at_any_batch_size(model, tok, prompts):
    keys = keys_for(prompts)
    ref = generate(model, tok, prompts, keys, seed=10, batch_size=1, **KW)
    for bs in (8, 3, 20):
        assert generate(model, tok, prompts, keys, seed=10, batch_size=bs, **KW) == ref
    assert len({len(p) for p in ref}) > 1 and all(isinstance(p, str) for p in ref)


def test_same_prediction_whatever_the_order(model, tok, prompts):
    keys = keys_for(prompts)
    ref = dict(zip(keys, generate(model, tok, prompts, keys, seed=20, batch_size=8, **KW)))
    perm = list(range(len(prompts)))
    random.Random(1).shuffle(perm)
    shuffled = generate(model, tok, [prompts[i] for i in perm], [keys[i] for i in perm], seed=20,
                        batch_size=5, **KW)
    assert shuffled == [ref[keys[i]] for i in perm]


def test_seed_and_key_choose_the_stream(model, tok, prompts):
    keys = keys_for(prompts)
    a = generate(model, tok, prompts, keys, seed=10, batch_size=8, **KW)
    assert generate(model, tok, prompts, keys, seed=10, batch_size=8, **KW) == a
    b = generate(model, tok, prompts, keys, seed=30, batch_size=8, **KW)
    assert sum(x != y for x, y in zip(a, b)) >= len(a) - 2
    assert example_seed(10, "a") == example_seed(10, "a") != example_seed(10, "b") != example_seed(20, "a")
    assert example_seed(10, "dolly:test:1") == 5140347870084768006   # stable across processes


def test_greedy_matches_transformers_one_at_a_time(model, tok, prompts):
    """Left padding, position ids and the KV cache give the same tokens as unpadded HF decoding."""
    ours = generate_ids(model, tok, prompts, keys_for(prompts), seed=0, temperature=0.0, batch_size=8, **KW)
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([encode_prompts(tok, [prompt], KW["max_prompt_len"], "head", True)[0]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert got == new


def test_gumbel_max_is_an_exact_sample():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    n = 20000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    picks = _pick(logits.expand(n, -1).clone(), gens, None, 1.0, 0, 1.0)
    freq = torch.bincount(picks, minlength=5).float() / n
    assert torch.allclose(freq, logits.softmax(-1), atol=0.012)
    # temperature sharpens, filters cut the tail
    hot = _pick(logits.expand(n, -1).clone(), gens, None, 0.5, 0, 1.0)
    hot_freq = torch.bincount(hot, minlength=5).float() / n
    assert torch.allclose(hot_freq, (logits / 0.5).softmax(-1), atol=0.012)
    top2 = _pick(logits.expand(n, -1).clone(), gens, None, 1.0, 2, 1.0)
    assert set(top2.tolist()) == {0, 1}
    nucleus = _pick(logits.expand(n, -1).clone(), gens, None, 1.0, 0, 0.6)   # p0 = 0.64 >= 0.6
    assert set(nucleus.tolist()) == {0}


def test_top_k_one_and_tiny_top_p_are_greedy(model, tok, prompts):
    keys = keys_for(prompts)
    greedy = generate(model, tok, prompts, keys, seed=0, temperature=0.0, batch_size=8, **KW)
    assert generate(model, tok, prompts, keys, seed=5, top_k=1, batch_size=8, **KW) == greedy
    assert generate(model, tok, prompts, keys, seed=5, top_p=1e-9, batch_size=8, **KW) == greedy


def test_no_repeat_ngram(model, tok, prompts):
    n = 2
    keys = keys_for(prompts)
    outs = generate_ids(model, tok, prompts, keys, seed=10, no_repeat_ngram_size=n, batch_size=8, **KW)
    for prompt, gen in zip(prompts, outs):
        seq = encode_prompts(tok, [prompt], 48, "head", True)[0] + gen
        first = len(seq) - len(gen)
        for t in range(max(first, n - 1), len(seq)):
            gram = tuple(seq[t - n + 1:t + 1])
            earlier = {tuple(seq[s - n + 1:s + 1]) for s in range(n - 1, t)}
            assert gram not in earlier
    same = generate_ids(model, tok, prompts, keys, seed=10, no_repeat_ngram_size=n, batch_size=1, **KW)
    assert same == outs


def test_prompt_truncation_sides(tok):
    text = " ".join(f"w{i}" for i in range(40))
    full = tok(text)["input_ids"]
    assert encode_prompts(tok, [text], 8, "head", True)[0] == full[:8]
    assert encode_prompts(tok, [text], 8, "tail", True)[0] == full[-8:]
    with pytest.raises(ValueError, match="prompt_truncation"):
        generate(None, tok, [text], ["k"], seed=0, prompt_truncation="middle")


def test_context_limit_cuts_new_tokens(tok, prompts):
    """Each prompt gets its own room (positions - its length): a long neighbour does not shorten a short
    prompt's generation, and the result does not depend on the batch."""
    small = tiny_gpt2(len(tok), n_positions=52)
    with pytest.warns(UserWarning, match="positions of the model's 52"):
        out = generate_ids(small, tok, prompts[:4], keys_for(prompts[:4]), seed=0, batch_size=4, **KW)
    lengths = [len(ids) for ids in encode_prompts(tok, prompts[:4], KW["max_prompt_len"], "head", True)]
    assert all(len(o) <= 52 - n for o, n in zip(out, lengths))
    with pytest.warns(UserWarning):
        alone = [generate_ids(small, tok, [p], keys_for(prompts[:4])[i:i + 1], seed=0, batch_size=1, **KW)[0]
                 for i, p in enumerate(prompts[:4])]
    assert alone == out


def test_a_prompt_without_room_for_a_token_is_refused(tok, prompts):
    small = tiny_gpt2(len(tok), n_positions=8)
    with pytest.raises(ValueError, match="no room for a new token"):
        generate_ids(small, tok, prompts[:2], keys_for(prompts[:2]), seed=0, batch_size=2, **KW)


# ---------------------------------------------------------------- a scripted model: EOS and pruning

class CountingTok:
    """Prompts are space-separated ids; id 0 is EOS."""
    eos_token_id = pad_token_id = 0
    bos_token_id = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(x) for x in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


class CountingModel(torch.nn.Module):
    """Always predicts (last token + 1) mod 10, so a row ends when it reaches 9; checks positions."""
    config = SimpleNamespace(max_position_embeddings=1000)

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.pruned = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        assert input_ids.shape[0] == attention_mask.shape[0] == position_ids.shape[0]
        if cache is None:
            expected = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            assert torch.equal(position_ids, expected)
            cache = SimpleNamespace(batch_select_indices=lambda idx: self.pruned.append(idx.tolist()))
        else:
            # the new token sits right after the row's real tokens, whatever the left padding
            assert torch.equal(position_ids[:, 0], attention_mask.sum(-1) - 1)
        logits = torch.full((*input_ids.shape, 10), -20.0)
        logits.scatter_(-1, ((input_ids + 1) % 10)[..., None], 20.0)
        return SimpleNamespace(logits=logits, cache=cache)


def test_rows_stop_at_eos_and_are_pruned():
    model, tok = CountingModel(), CountingTok()
    prompts = ["1 2 7", "3", "5 5 5 5 9", "6 6"]
    out = generate(model, tok, prompts, ["a", "b", "c", "d"], seed=0, max_new_tokens=10, batch_size=4,
                   progress=False)
    assert out == ["8 9", "4 5 6 7 8 9", "", "7 8 9"]
    assert model.pruned, "finished rows should leave the KV cache"
    capped = generate(model, tok, prompts, ["a", "b", "c", "d"], seed=0, max_new_tokens=3, batch_size=2,
                      progress=False)
    assert capped == ["8 9", "4 5 6", "", "7 8 9"]


def test_bench_script_runs(monkeypatch):
    """`python -m adakd.bench.generate` end to end at toy size (synthetic prompts, 2 layers)."""
    from adakd.bench import generate as bench

    monkeypatch.delenv("ADAKD_DATA_DIR", raising=False)
    res = bench.run(bench_args := SimpleNamespace(
        model=None, n_prompts=3, max_new_tokens=3, max_prompt_len=32, batch_size=2, seed=1, threads=0,
        n_layer=1, n_embd=32, vocab=300))
    assert res["prompts"]["source"] == "synthetic" and res["settings"]["batch_size"] == bench_args.batch_size
    assert res["adakd_batched"]["tokens"] > 0 and res["ratios"]["speedup"] > 0
