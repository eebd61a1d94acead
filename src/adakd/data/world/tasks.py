"""Dolly-like instruction data about the generated world (adakd.data.world), and five benchmarks.

Open-ended tasks whose answers draw on what a model learnt in pretraining: describe an entity, compare
two, list members with a property, brainstorm gift or visit ideas, write a short story, summarise a
given passage, answer a question from a given context, extract names from a text; a few closed tasks
(a fact, a classification) stay for variety. Every answer can be said in several ways -- sentence
templates, the order of facts and of list items, optional openers -- and every example carries several
of them as references (the first is the training target, drawn at random), so a teacher fine-tuned on
the data has broad next-token distributions and ROUGE-L takes the max over right answers.

Splits. An instance is identified by a key (task and the entities or properties it is about). Keys are
assigned to train / dev / test by a hash, so no test instance is asked in training, in any phrasing.
The last land of the world is held out of every instruction split except `world-entities`.

The five benchmarks mirror the protocol's five sets (Dolly, SelfInst, Vicuna, S-NI, UnNI):

* ``world-test``     -- in-domain: the training tasks and phrasings on held-out instances (Dolly's test split).
* ``world-phrasing`` -- the training tasks asked in instruction phrasings never used in training
                        (user-written requests, as SelfInst's).
* ``world-newtask``  -- open-ended task families never trained (letters, self-introductions,
                        recommendations), few and generative like Vicuna's questions.
* ``world-longctx``  -- the context tasks (summarise, answer from a text, extract names) on inputs three
                        times longer than in training, like S-NI's input-heavy task instances.
* ``world-entities`` -- the training tasks about the held-out land: entities that appear only in
                        pretraining prose, never in instruction data (the breadth of UnNI).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..example import Example
from ..prompts import render_prompt
from . import World, WorldSpec, build_world
from .draws import (
    Draw,
    classify_diet,
    compare_people,
    compare_towns,
    context_qa,
    describe_artifact,
    describe_creature,
    describe_person,
    describe_town,
    extract_names,
    fact,
    gift_ideas,
    introduce,
    letter,
    list_occupation,
    list_pet_owners,
    list_residents,
    name_creatures,
    recommend,
    story,
    summarize,
    visit_ideas,
)

BENCHMARKS = ["world-test", "world-phrasing", "world-newtask", "world-longctx", "world-entities"]
BENCHMARK_DESCRIPTIONS = {
    "world-test": "in-domain: training tasks and phrasings on held-out instances (Dolly analogue)",
    "world-phrasing": "training tasks in instruction phrasings never seen in training (SelfInst analogue)",
    "world-newtask": "open-ended task families never trained: letters, self-introductions, "
                     "recommendations (Vicuna analogue)",
    "world-longctx": "context tasks (summarise / answer from text / extract) on 3x longer inputs (S-NI analogue)",
    "world-entities": "training tasks about a land whose entities appear only in pretraining (UnNI analogue)",
}
# Share of the keys of the seen lands that goes to each split (the rest, 100 - 70 - 5, is test).
TRAIN_PCT, DEV_PCT = 70, 5
N_REFS = 4


@dataclass(frozen=True)
class Task:
    name: str
    category: str                    # Dolly's category names
    phrasings: Sequence[str]         # used in train / dev / test
    heldout_phrasings: Sequence[str]  # world-phrasing only
    draw: Callable[..., Optional[Draw]]   # (world, rng, lands, long) -> Draw or None (no instance here)
    context: bool = False            # has an input passage


# ----------------------------------------------------------------------------------------- registry
TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("describe_person", "open_qa",
         ["Tell me about {P}.", "Who is {P}?", "Describe {P}.", "What do you know about {P}?"],
         ["I keep hearing the name {P}. Who is that?", "Could you write a few lines about {P}?",
          "Please introduce {P} to me."], describe_person),
    Task("describe_town", "open_qa",
         ["Tell me about {T}.", "What is {T} like?", "Describe {T}.", "What do you know about {T}?"],
         ["I might move to {T}. What kind of place is it?", "Give me an overview of {T}."], describe_town),
    Task("describe_creature", "open_qa",
         ["What is the {C}?", "Describe the {C}.", "Tell me about the {C}."],
         ["I saw a {C} yesterday. What kind of animal is that?", "Explain what a {C} is."], describe_creature),
    Task("describe_artifact", "open_qa",
         ["What is {A}?", "Tell me about {A}.", "Describe {A}."],
         ["Have you heard of {A}? What is it?", "Write a few words about {A}."], describe_artifact),
    Task("compare_people", "general_qa",
         ["How are {A} and {B} different?", "Compare {A} and {B}.", "What is the difference between {A} and {B}?"],
         ["{A} or {B}: how do they differ?", "Tell me how {A} differs from {B}."], compare_people),
    Task("compare_towns", "general_qa",
         ["Compare {A} and {B}.", "How is {A} different from {B}?"],
         ["Which is which: {A} and {B}? Explain the differences."], compare_towns),
    Task("list_residents", "brainstorming",
         ["Who lives in {T}?", "Name the people who live in {T}.", "List the residents of {T}."],
         ["Which people call {T} home?", "Can you tell me who lives in {T}?"], list_residents),
    Task("list_occupation", "information_extraction",
         ["Who works as {occ_a} in {land}?", "Name the {occ}s of {land}."],
         ["I am looking for every {occ} in {land}. Who are they?"], list_occupation),
    Task("list_pet_owners", "information_extraction",
         ["Who keeps the {C} as a pet?", "Which people have a {C} as a pet?"],
         ["Does anyone have a pet {C}? Who?"], list_pet_owners),
    Task("name_creatures", "brainstorming",
         ["Name {k} creatures that live in {land}.", "List {k} creatures of {land}."],
         ["Which animals could I meet in {land}? Give me {k}."], name_creatures),
    Task("gift_ideas", "brainstorming",
         ["What would be a good gift for {P}?", "Suggest a present for {P}.", "Give me gift ideas for {P}."],
         ["It is {P}'s birthday soon. What should I bring?", "I want to surprise {P}. Any ideas?"], gift_ideas),
    Task("visit_ideas", "brainstorming",
         ["What can I do in {T}?", "Give me ideas for a day in {T}.", "What is there to do in {T}?"],
         ["I have one free day in {T}. How should I spend it?", "Suggest some activities for a visitor to {T}."],
         visit_ideas),
    Task("story", "creative_writing",
         ["Write a short story about {P}.", "Tell me a little story about {P}."],
         ["Could you make up a short tale with {P} in it?"], story),
    Task("fact", "open_qa", ["{Q}"], ["Quick question: {Q}", "{Q} Answer in one sentence."], fact),
    Task("classify_diet", "classification",
         ["Is the {C} a hunter or a plant-eater?", "Does the {C} hunt or eat plants?"],
         ["Would you call the {C} a hunter or a plant-eater?"], classify_diet),
    Task("context_qa", "closed_qa",
         ["{Q}", "Read the text and answer: {Q}", "Using the passage, answer this question: {Q}"],
         ["{Q} The answer is in the text below.", "Here is a text. {Q}"], context_qa, context=True),
    Task("summarize", "summarization",
         ["Summarize the passage in one sentence.", "Give a one-sentence summary of this text.",
          "What is this passage about?"],
         ["Sum up the text below briefly.", "In a sentence, what does this text say?"], summarize, context=True),
    Task("extract_names", "information_extraction",
         ["List the people mentioned in the passage.", "Which people are named in this text?"],
         ["Pull out every person's name from the text below."], extract_names, context=True),
]}
# Never in the instruction training data: the world-newtask benchmark.
NEW_TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("letter", "creative_writing", ["Write a short letter from {P} to {F}."], [], letter),
    Task("introduce", "creative_writing", ["Imagine you are {P}. Introduce yourself."], [], introduce),
    Task("recommend", "general_qa", ["I need {occ_a} in {land}. Who should I ask?"], [], recommend),
]}
CONTEXT_TASKS = [n for n, t in TASKS.items() if t.context]


# ------------------------------------------------------------------------------------------- splits
def key_split(key: Tuple[str, ...], seed: int) -> str:
    """train / dev / test of a key: a stable hash, so a key is in one split only."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{'|'.join(key)}".encode()).digest()[:8], "little") % 100
    return "train" if h < TRAIN_PCT else "dev" if h < TRAIN_PCT + DEV_PCT else "test"


def references(draw: Draw, rng: random.Random, n: int = N_REFS) -> List[str]:
    """Up to `n` distinct right answers; the first is drawn first (the training target)."""
    refs: List[str] = []
    for _ in range(6 * n):
        r = draw.respond(rng)
        if r not in refs:
            refs.append(r)
        if len(refs) == n:
            break
    return refs


def _example(task: Task, draw: Draw, rng: random.Random, name: str, split_tag: str, i: int,
             phrasings: Sequence[str]) -> Example:
    instruction = rng.choice(list(phrasings)).format(**draw.slots)
    refs = references(draw, rng)
    return Example(instruction=instruction, input=draw.input, prompt=render_prompt(instruction, draw.input),
                   references=refs, id=f"{name}-{split_tag}-{i}",
                   meta={"task": task.name, "category": task.category, "key": "|".join(draw.key)})


@dataclass(frozen=True)
class Pool:
    """What one split or benchmark draws from."""
    tasks: Sequence[str]
    lands: str          # "seen" or "heldout"
    keys: Optional[str]  # required key split ("train", "dev", "test") or None (any)
    heldout_phrasing: bool = False
    long: bool = False
    new_tasks: bool = False


POOLS: Dict[str, Pool] = {
    "train": Pool(list(TASKS), "seen", "train"),
    "dev": Pool(list(TASKS), "seen", "dev"),
    "world-test": Pool(list(TASKS), "seen", "test"),
    "world-phrasing": Pool(list(TASKS), "seen", "test", heldout_phrasing=True),
    "world-newtask": Pool(list(NEW_TASKS), "seen", None, new_tasks=True),
    "world-longctx": Pool(CONTEXT_TASKS, "seen", "test", long=True),
    "world-entities": Pool(list(TASKS), "heldout", None),
}


def seen_lands(w: World) -> List[str]:
    return w.lands[:-1]


def heldout_lands(w: World) -> List[str]:
    return w.lands[-1:]


def generate(w: World, which: str, n: int, seed: int = 0) -> List[Example]:
    """`n` examples of a split ("train", "dev") or benchmark (BENCHMARKS). Example i depends only on
    (world, which, i, seed), so a longer list extends a shorter one; tasks go round-robin."""
    if which not in POOLS:
        raise ValueError(f"unknown world split or benchmark {which!r}; valid: {sorted(POOLS)}")
    pool = POOLS[which]
    registry = NEW_TASKS if pool.new_tasks else TASKS
    lands = seen_lands(w) if pool.lands == "seen" else heldout_lands(w)
    out = []
    for i in range(n):
        rng = random.Random(f"adakd-world-tasks/{w.seed}/{seed}/{which}/{i}")
        for attempt in range(len(pool.tasks) * 50):
            task = registry[pool.tasks[(i + attempt // 50) % len(pool.tasks)]]
            draw = task.draw(w, rng, lands, pool.long)
            if draw is not None and (pool.keys is None or key_split(draw.key, seed) == pool.keys):
                break
        else:
            raise RuntimeError(f"no instance of {which} found for example {i}")
        phrasings = task.heldout_phrasings if pool.heldout_phrasing else task.phrasings
        out.append(_example(task, draw, rng, which, str(seed), i, phrasings))
    return out


def world_for(spec: Dict | None) -> World:
    return build_world(WorldSpec.from_dict(spec))


def generate_all(spec: Dict | None, n_train: int, n_dev: int, n_test: int, seed: int) -> Dict[str, Any]:
    """The train and dev splits and the five benchmarks (`n_test` examples each; eval.max_samples takes the
    first N) of dataset=world, with the provenance of each (assemble.data wraps them into the run's data)."""
    spec = dict(spec or {})
    w = world_for(spec)
    benches = {name: generate(w, name, n_test, seed) for name in BENCHMARKS}
    files = {name: {"generator": "adakd.data.world_tasks", "world": spec, "seed": seed,
                    "description": BENCHMARK_DESCRIPTIONS[name]} for name in BENCHMARKS}
    files["train"] = {"generator": "adakd.data.world_tasks", "world": spec, "seed": seed, "n_train": n_train}
    return {"train": generate(w, "train", n_train, seed), "dev": generate(w, "dev", n_dev, seed),
            "test": benches["world-test"], "files": files, "benchmarks": benches}
