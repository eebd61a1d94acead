"""Alpaca rendering, chat wrapping, encode_example (labels, EOS, length limits) and collate_train."""
from __future__ import annotations

import copy

import pytest
import torch

from adakd.data import collate_train, encode_example, load_benchmark, render_prompt
from adakd.data.prompts import IGNORE_INDEX, apply_chat_template, tokenize_pair

from .helpers_tiny import tiny_tokenizer


def test_render_exact_strings():
    assert render_prompt("Name a colour.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    assert render_prompt("Translate.", "Hallo") == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "Translate.\n\n### Input:\nHallo\n\n### Response:\n")


@pytest.mark.parametrize("name", ["dolly", "self-inst", "vicuna", "sinst"])
def test_render_equals_file_prompts(name, data_root):
    examples = load_benchmark(name, data_root)
    assert all(render_prompt(ex.instruction, ex.input) == ex.prompt for ex in examples)
    if name == "dolly":
        assert len(examples) == 500
        assert {bool(ex.input) for ex in examples} == {True, False}   # both variants exercised


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_labels_mask_prompt_and_end_with_eos(tok):
    prompt, response = render_prompt("Name a colour."), "Red is a colour."
    enc = encode_example(tok, prompt, response)
    p_ids = tok(prompt)["input_ids"]
    n_p = len(p_ids)
    assert enc["input_ids"][:n_p] == p_ids
    assert enc["labels"][:n_p] == [IGNORE_INDEX] * n_p
    assert enc["labels"][n_p:] == enc["input_ids"][n_p:]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n_p:-1]) == response
    no_eos = encode_example(tok, prompt, response, add_eos=False)
    assert no_eos["input_ids"] == enc["input_ids"][:-1]


def test_tokenize_pair_keeps_prompt_tokens(tok):
    # whatever the merges at the boundary, the prompt tokens are those generation will see
    for prompt, response in [("abc", "def"), ("Say it:\n", "\nok"), ("x ", " y")]:
        p, r = tokenize_pair(tok, prompt, response)
        assert p == tok(prompt)["input_ids"]
        assert tok.decode(p + r) == prompt + response


def _long(n_words: int) -> str:
    return " ".join(["apple banana cherry"] * n_words)


def test_overlong_prompt_drop_vs_truncate(tok):
    prompt, response = render_prompt(_long(40)), "Yes."
    n_prompt = len(tok(prompt)["input_ids"])
    assert n_prompt > 32
    assert encode_example(tok, prompt, response, max_prompt_len=32, max_len=64) is None
    enc = encode_example(tok, prompt, response, max_prompt_len=32, max_len=64, overlong="truncate")
    assert enc["input_ids"][:32] == tok(prompt)["input_ids"][:32]   # MiniLLM keeps the first tokens
    assert enc["labels"][:32] == [IGNORE_INDEX] * 32 and enc["labels"][32] != IGNORE_INDEX
    assert enc["input_ids"][-1] == tok.eos_token_id


def test_overlong_response_drop_vs_truncate(tok):
    prompt, response = render_prompt("List fruit."), _long(60)
    n_prompt = len(tok(prompt)["input_ids"])
    assert encode_example(tok, prompt, response, max_prompt_len=n_prompt, max_len=n_prompt + 20) is None
    enc = encode_example(tok, prompt, response, max_prompt_len=n_prompt, max_len=n_prompt + 20,
                         overlong="truncate")
    assert len(enc["input_ids"]) == n_prompt + 20
    assert enc["input_ids"][-1] != tok.eos_token_id      # a cut response does not teach stopping
    # exactly at the limit: kept by both policies
    fits = encode_example(tok, prompt, "Apple.", max_prompt_len=n_prompt, max_len=n_prompt + 8)
    assert fits is not None and len(fits["input_ids"]) <= n_prompt + 8


def test_encode_rejects_bad_settings(tok):
    with pytest.raises(ValueError, match="overlong"):
        encode_example(tok, "a", "b", overlong="cut")
    with pytest.raises(ValueError, match="max_prompt_len < max_len"):
        encode_example(tok, "a", "b", max_prompt_len=512, max_len=512)


def test_collate_right_pads(tok):
    a = encode_example(tok, render_prompt("Say hi."), "Hi.")
    b = encode_example(tok, render_prompt("Say a much longer thing, please."), "A much longer thing indeed.")
    batch = collate_train([a, b], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape == (2, len(b["input_ids"]))
    n = len(a["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(b["input_ids"]) - n)
    assert torch.all(batch["labels"][0, n:] == IGNORE_INDEX)
    assert torch.all(batch["input_ids"][0, n:] == tok.pad_token_id)
    assert batch["labels"][1].tolist() == b["labels"]
    with pytest.raises(ValueError):
        collate_train([], pad_id=0)


def test_chat_template_wrapping(tok):
    with pytest.raises(ValueError, match="no chat template"):
        apply_chat_template(tok, "hello")
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = render_prompt("Name a colour.")
    assert apply_chat_template(chat_tok, prompt) == f"<user>{prompt}</s><assistant>"
