"""The world miniature's generators: deterministic, consistent, and with splits that are what they claim."""
from __future__ import annotations

import re

import pytest

from adakd.data import world
from adakd.data.world import tasks as wt

from .compose import compose_cfg

N = 150   # examples per split in these tests: enough for every task several times, seconds to generate


@pytest.fixture(scope="module")
def w():
    return wt.world_for({})


@pytest.fixture(scope="module")
def splits(w):
    return {name: wt.generate(w, name, N) for name in ["train", "dev"] + wt.BENCHMARKS}


def _names_in(text: str, names):
    return [n for n in names if re.search(r"(?<![A-Za-z])" + re.escape(n) + r"(?![A-Za-z])", text)]


def _texts(ex):
    return [ex.instruction, ex.input, *ex.references]


def test_world_is_deterministic_and_consistent(w):
    again = world.build_world(world.WorldSpec())
    assert [p.__dict__ for p in again.people] == [p.__dict__ for p in w.people]
    assert [t.__dict__ for t in again.towns] == [t.__dict__ for t in w.towns]
    names = w.entity_names()
    assert len(names) == len(set(n.lower() for n in names)), "entity names must be unique"
    for p in w.people:   # relations never leave a land (a land can be held out whole)
        assert w.town[p.town].land == p.land and w.creature[p.pet].land == p.land
        assert w.person[p.friend].land == p.land and p.friend != p.name
    for a in w.artifacts:
        assert w.person[a.maker].land == a.land and w.town[a.town].land == a.land
    assert all(w.residents(t.name) for t in w.towns), "every town has residents"
    other = world.build_world(world.WorldSpec(seed=1))
    assert [p.name for p in other.people] != [p.name for p in w.people]


def test_corpus_is_deterministic_prose_without_instruction_format(w):
    a, b = world.corpus(w, 300), world.corpus(w, 300)
    assert a == b
    assert world.corpus(w, 100, "heldout") != a[:100]
    assert not any("###" in t or "Instruction" in t for t in a)
    assert len(set(a)) > 280, "passages vary"
    kinds = {world.passage(w, __import__("random").Random(i))[0] for i in range(200)}
    assert kinds == set(world.PASSAGE_KINDS)


def test_every_fact_in_prose_is_true(w):
    """Spot check: every 'X lives in Y' / 'X is a <occupation>' in the corpus matches the world."""
    occupations = "|".join(world.OCCUPATIONS)
    for text in world.corpus(w, 400):
        for name, town in re.findall(r"\b([A-Z][a-z]+) lives in ([A-Z][a-z]+)", text):
            if name in w.person:
                assert w.person[name].town == town, text
        for name, occ in re.findall(rf"\b([A-Z][a-z]+) (?:is an?|works as an?) ({occupations})\b", text):
            if name in w.person:
                assert w.person[name].occupation == occ, text


def test_generation_is_deterministic_and_prefix_stable(w):
    a = wt.generate(w, "train", 40)
    b = wt.generate(w, "train", 40)
    assert [(e.prompt, e.references) for e in a] == [(e.prompt, e.references) for e in b]
    longer = wt.generate(w, "train", 60)
    assert [e.prompt for e in longer[:40]] == [e.prompt for e in a]
    assert [e.prompt for e in wt.generate(w, "train", 40, seed=1)] != [e.prompt for e in a]


def test_open_ended_examples_have_several_references(splits):
    train = splits["train"]
    closed = {"fact", "classify_diet", "context_qa"}
    for ex in train:
        assert ex.references and len(set(ex.references)) == len(ex.references)
        if ex.meta["task"] not in closed:
            assert len(ex.references) >= 2, ex
    open_ended = [e for e in train if e.meta["task"] not in closed]
    assert sum(len(e.references) == wt.N_REFS for e in open_ended) / len(open_ended) > 0.8
    assert {e.meta["task"] for e in train} == set(wt.TASKS)


def test_test_keys_never_appear_in_training(splits):
    train_keys = {e.meta["key"] for e in splits["train"]}
    for name in ["dev", "world-test", "world-phrasing", "world-longctx"]:
        keys = {e.meta["key"] for e in splits[name]}
        assert not keys & train_keys, name
        assert all(wt.key_split(tuple(k.split("|")), 0) == ("dev" if name == "dev" else "test") for k in keys)


def test_unseen_entity_benchmark_has_no_training_entity(w, splits):
    held = wt.heldout_lands(w)[0]
    seen_names = [n for land in wt.seen_lands(w) for n in w.entity_names(land)]
    held_names = w.entity_names(held)
    for ex in splits["world-entities"]:
        for text in _texts(ex):
            assert not _names_in(text, seen_names), (text, _names_in(text, seen_names))
        assert _names_in(" ".join(_texts(ex)), held_names)
    for name in ["train", "dev", "world-test", "world-phrasing", "world-newtask", "world-longctx"]:
        for ex in splits[name]:
            for text in _texts(ex):
                assert not _names_in(text, held_names), (name, text)


def test_phrasing_newtask_and_longctx_are_out_of_domain(splits):
    train_instr = {e.instruction for e in splits["train"]}
    assert not {e.instruction for e in splits["world-phrasing"]} & train_instr
    for task in wt.TASKS.values():
        assert not set(task.phrasings) & set(task.heldout_phrasings), task.name
    assert {e.meta["task"] for e in splits["world-newtask"]} == set(wt.NEW_TASKS)
    assert not set(wt.NEW_TASKS) & {e.meta["task"] for e in splits["train"]}
    train_ctx = [len(e.input.split()) for e in splits["train"] if e.input]
    long_ctx = [len(e.input.split()) for e in splits["world-longctx"]]
    assert all(e.input for e in splits["world-longctx"])
    assert sum(long_ctx) / len(long_ctx) > 2.5 * sum(train_ctx) / len(train_ctx)


def test_prompts_use_the_alpaca_template(splits):
    from adakd.data.prompts import render_prompt
    for name, exs in splits.items():
        for ex in exs[:20]:
            assert ex.prompt == render_prompt(ex.instruction, ex.input)
            assert ex.id.startswith(name)


def test_run_data_wires_the_five_benchmarks():
    from adakd.assemble.data import build_train_data
    cfg = compose_cfg(["dataset=world", "dataset.n_train=30", "dataset.n_dev=5", "dataset.n_test=7"])
    data = build_train_data(cfg.dataset)
    assert len(data.train) == 30 and len(data.dev) == 5
    assert list(data.benchmarks) == wt.BENCHMARKS and all(len(v) == 7 for v in data.benchmarks.values())
    assert data.files["world-entities"]["description"] == wt.BENCHMARK_DESCRIPTIONS["world-entities"]
