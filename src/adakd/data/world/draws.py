"""The instances of the world miniature's tasks (adakd.data.world_tasks): for each task family a `draw`
that picks the entities an instance is about and returns its key, the instruction's slots, the input text
and a sampler of right answers (several phrasings, orders and openers of the same facts).

Knowledge tasks draw on what pretraining taught (describe, compare, list, brainstorm, a story, a fact, a
classification); context tasks carry their passage in the input (answer from a text, summarise, extract
names); the held-out families (a letter, a self-introduction, a recommendation) are never trained and make
the world-newtask benchmark.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from . import (ARTIFACT_KEYS, CREATURE_KEYS, PERSON_KEYS, TERRAIN_ACTIVITIES, TERRAIN_PLACE, TOOLS,
                    TOWN_KEYS, World, a_an, artifact_sentences, cap,
                    creature_passage, creature_sentences, join_names, person_sentences, some,
                    story_passage, town_passage, town_sentences)


@dataclass
class Draw:
    """One task instance: its key, the instruction's slots, the input text, and a response sampler."""
    key: Tuple[str, ...]
    slots: Dict[str, str]
    input: str
    respond: Callable[[random.Random], str]


# ------------------------------------------------------------------------------------------ helpers
OPENERS = ["Sure! ", "Of course. ", "Here is what I know. ", "Certainly. "]


def opener(rng: random.Random, p: float = 0.3) -> str:
    return rng.choice(OPENERS) if rng.random() < p else ""


def bullet_or_sentence(rng: random.Random, items: List[str], sentence: str, lead: str) -> str:
    """A list either as a sentence or as bullet lines after a lead-in."""
    if rng.random() < 0.3:
        return lead + "\n" + "\n".join("- " + cap(x) for x in items)
    return sentence


def _shuffled(rng: random.Random, xs: Sequence[str]) -> List[str]:
    xs = list(xs)
    rng.shuffle(xs)
    return xs


# --------------------------------------------------------------------------------- knowledge tasks
def describe_person(w: World, rng, lands, long=False):
    p = rng.choice([p for p in w.people if p.land in lands])

    def respond(r):
        keys = some(r, PERSON_KEYS, 2, 3, r.choice(["occupation", "town"]))
        return opener(r) + " ".join(person_sentences(w, p, r, keys))
    return Draw(("describe_person", p.name), {"P": p.name}, "", respond)


def describe_town(w: World, rng, lands, long=False):
    t = rng.choice([t for t in w.towns if t.land in lands])

    def respond(r):
        return opener(r) + " ".join(town_sentences(w, t, r, some(r, TOWN_KEYS, 2, 3, "kind")))
    return Draw(("describe_town", t.name), {"T": t.name}, "", respond)


def describe_creature(w: World, rng, lands, long=False):
    c = rng.choice([c for c in w.creatures if c.land in lands])

    def respond(r):
        return opener(r) + " ".join(creature_sentences(w, c, r, some(r, CREATURE_KEYS, 2, 3, "look")))
    return Draw(("describe_creature", c.name), {"C": c.name}, "", respond)


def describe_artifact(w: World, rng, lands, long=False):
    a = rng.choice([a for a in w.artifacts if a.land in lands])

    def respond(r):
        return opener(r) + " ".join(artifact_sentences(w, a, r, some(r, ARTIFACT_KEYS, 2, 3)))
    return Draw(("describe_artifact", a.name), {"A": a.name, "A_cap": cap(a.name)}, "", respond)


def _pair(rng, xs):
    a, b = rng.sample(xs, 2)
    return a, b


def compare_people(w: World, rng, lands, long=False):
    land = rng.choice(lands)
    a, b = _pair(rng, w.people_of(land))

    def clause(r, k):
        va, vb = getattr(a, k), getattr(b, k)
        if va == vb:
            return {"occupation": f"Both {a.name} and {b.name} work as {va}s.",
                    "town": f"Both {a.name} and {b.name} live in {va}.",
                    "pet": f"{a.name} and {b.name} both keep {a_an(va)} as a pet.",
                    "food": f"{a.name} and {b.name} both love {va}.",
                    "hobby": f"{a.name} and {b.name} both enjoy {va}."}[k]
        forms = {"occupation": [f"{a.name} is {a_an(va)}, while {b.name} is {a_an(vb)}.",
                                f"{a.name} works as {a_an(va)} and {b.name} works as {a_an(vb)}."],
                 "town": [f"{a.name} lives in {va}, but {b.name} lives in {vb}.",
                          f"{a.name} comes from {va} and {b.name} from {vb}."],
                 "pet": [f"{a.name} has a pet {va}, while {b.name} keeps {a_an(vb)}.",
                         f"{a.name}'s pet is {a_an(va)} and {b.name}'s is {a_an(vb)}."],
                 "food": [f"{a.name} loves {va}, whereas {b.name} prefers {vb}.",
                          f"{a.name}'s favourite food is {va}; {b.name}'s is {vb}."],
                 "hobby": [f"{a.name} enjoys {va}, while {b.name} likes {vb}.",
                           f"In their free time, {a.name} enjoys {va} and {b.name} {vb}."]}
        return r.choice(forms[k])

    def respond(r):
        keys = r.sample(["occupation", "town", "pet", "food", "hobby"], r.randint(2, 3))
        return opener(r, 0.2) + " ".join(clause(r, k) for k in keys)
    key = ("compare_people",) + tuple(sorted([a.name, b.name]))
    return Draw(key, {"A": a.name, "B": b.name}, "", respond)


def compare_towns(w: World, rng, lands, long=False):
    land = rng.choice(lands)
    a, b = _pair(rng, w.towns_of(land))

    def clause(r, k):
        if k == "size":
            if a.size == b.size:
                return f"{a.name} and {b.name} are both {a.size}s."
            return r.choice([f"{a.name} is {a_an(a.size)}, while {b.name} is {a_an(b.size)}.",
                             f"{a.name} is {a_an(a.size)} and {b.name} is {a_an(b.size)}."])
        if k == "terrain":
            if a.terrain == b.terrain:
                return f"Both towns lie {TERRAIN_PLACE[a.terrain]}."
            return r.choice([f"{a.name} lies {TERRAIN_PLACE[a.terrain]}, but {b.name} lies {TERRAIN_PLACE[b.terrain]}.",
                             f"{a.name} is {TERRAIN_PLACE[a.terrain]}, while {b.name} is {TERRAIN_PLACE[b.terrain]}."])
        if a.product == b.product:
            return f"Both towns are known for their {a.product}."
        return r.choice([f"{a.name} is known for its {a.product}, and {b.name} for its {b.product}.",
                         f"{a.name} is famous for {a.product}, while {b.name} is famous for {b.product}."])

    def respond(r):
        keys = r.sample(["size", "terrain", "product"], r.randint(2, 3))
        return opener(r, 0.2) + " ".join(clause(r, k) for k in keys)
    key = ("compare_towns",) + tuple(sorted([a.name, b.name]))
    return Draw(key, {"A": a.name, "B": b.name}, "", respond)


def list_residents(w: World, rng, lands, long=False):
    t = rng.choice([t for t in w.towns if t.land in lands])
    names = [p.name for p in w.residents(t.name)]

    def respond(r):
        xs = _shuffled(r, names)
        if len(xs) == 1:
            return f"Only {xs[0]} lives in {t.name}."
        sentence = r.choice([f"{join_names(xs, r)} live in {t.name}.",
                             f"The people of {t.name} are {join_names(xs, r)}.",
                             f"In {t.name} you will find {join_names(xs, r)}."])
        return opener(r, 0.2) + bullet_or_sentence(r, xs, sentence, f"These people live in {t.name}:")
    return Draw(("list_residents", t.name), {"T": t.name}, "", respond)


def list_occupation(w: World, rng, lands, long=False):
    land = rng.choice(lands)
    occs = sorted({p.occupation for p in w.people_of(land)})
    occ = rng.choice(occs)
    names = [p.name for p in w.people_of(land) if p.occupation == occ]

    def respond(r):
        xs = _shuffled(r, names)
        if len(xs) == 1:
            return r.choice([f"The only {occ} in {land} is {xs[0]}.", f"{xs[0]} is the only {occ} in {land}."])
        sentence = r.choice([f"{join_names(xs, r)} work as {occ}s in {land}.",
                             f"The {occ}s of {land} are {join_names(xs, r)}."])
        return opener(r, 0.2) + bullet_or_sentence(r, xs, sentence, f"The {occ}s of {land} are:")
    return Draw(("list_occupation", land, occ), {"occ": occ, "occ_a": a_an(occ), "land": land}, "", respond)


def list_pet_owners(w: World, rng, lands, long=False):
    c = rng.choice([c for c in w.creatures if c.land in lands])
    names = [p.name for p in w.people_of(c.land) if p.pet == c.name]

    def respond(r):
        if not names:
            return r.choice([f"Nobody keeps the {c.name} as a pet.",
                             f"No one in {c.land} keeps the {c.name} as a pet; it lives in the wild."])
        xs = _shuffled(r, names)
        verb = "keeps" if len(xs) == 1 else "keep"
        sentence = r.choice([f"{join_names(xs, r)} {verb} the {c.name} as a pet.",
                             f"The {c.name} is kept as a pet by {join_names(xs, r)}."])
        return opener(r, 0.2) + (bullet_or_sentence(r, xs, sentence, f"These people keep the {c.name} as a pet:")
                                 if len(xs) > 1 else sentence)
    return Draw(("list_pet_owners", c.name), {"C": c.name}, "", respond)


def name_creatures(w: World, rng, lands, long=False):
    land = rng.choice(lands)
    k = rng.randint(2, 4)
    cs = [c for c in w.creatures_of(land)]

    def respond(r):
        xs = ["the " + c.name for c in r.sample(cs, k)]
        sentence = r.choice([f"{cap(join_names(xs, r))} all live in {land}.",
                             f"In {land} you can find {join_names(xs, r)}.",
                             f"Some creatures of {land} are {join_names(xs, r)}."])
        return opener(r, 0.2) + bullet_or_sentence(r, xs, sentence, f"Here are {NUM[k]} creatures of {land}:")
    return Draw(("name_creatures", land, str(k)), {"land": land, "k": NUM[k]}, "", respond)


NUM = ["zero", "one", "two", "three", "four", "five", "six"]


def gift_ideas(w: World, rng, lands, long=False):
    p = rng.choice([p for p in w.people if p.land in lands])
    ideas = {"food": [f"some {p.food}, {p.their} favourite food", f"a basket of {p.food}"],
             "pet": [f"a toy for {p.their} {p.pet}", f"a warm bed for {p.their} pet {p.pet}"],
             "hobby": [f"something for {p.hobby}", f"a book about {p.hobby}"],
             "tool": [f"a new {TOOLS[p.occupation]} for {p.their} work as {a_an(p.occupation)}",
                      f"a fine {TOOLS[p.occupation]}, since {p.they} is {a_an(p.occupation)}"]}

    def respond(r):
        xs = [r.choice(ideas[k]) for k in r.sample(sorted(ideas), r.randint(2, 3))]
        sentence = r.choice([f"You could give {p.name} {join_names(xs).replace(' and ', ' or ')}.",
                             f"{p.name} would be happy with {join_names(xs).replace(' and ', ' or ')}.",
                             f"A good gift for {p.name} would be {xs[0]}. "
                             + " ".join(f"{cap(p.they)} would also like {x}." for x in xs[1:])])
        return opener(r, 0.3) + bullet_or_sentence(r, xs, sentence, f"Here are some gift ideas for {p.name}:")
    return Draw(("gift_ideas", p.name), {"P": p.name}, "", respond)


def visit_ideas(w: World, rng, lands, long=False):
    t = rng.choice([t for t in w.towns if t.land in lands])
    residents = w.residents(t.name)
    ideas = list(TERRAIN_ACTIVITIES[t.terrain]) + [f"buy some {t.product}, which {t.name} is known for",
                                                   f"take a trip to nearby {t.neighbour}"]

    def respond(r):
        local = r.choice(residents)
        pool = ideas + [f"meet {local.name}, the local {local.occupation}"]
        xs = r.sample(pool, r.randint(2, 4))
        sentence = r.choice([f"In {t.name} you can {join_names(xs)}.",
                             f"A visitor to {t.name} could {join_names(xs)}.",
                             f"There is a lot to do in {t.name}: you can {join_names(xs)}."])
        return opener(r, 0.3) + bullet_or_sentence(r, xs, sentence, f"Things to do in {t.name}:")
    return Draw(("visit_ideas", t.name), {"T": t.name}, "", respond)


def story(w: World, rng, lands, long=False):
    p = rng.choice([p for p in w.people if p.land in lands])
    return Draw(("story", p.name), {"P": p.name}, "", lambda r: story_passage(w, p, r))


def fact(w: World, rng, lands, long=False):
    kind = rng.choice(["lives", "job", "known", "eats", "maker", "kept"])
    if kind in ("lives", "job"):
        p = rng.choice([p for p in w.people if p.land in lands])
        if kind == "lives":
            forms = [f"{p.name} lives in {p.town}.", f"{p.name} lives in {p.town}, in {p.land}.",
                     f"{cap(p.they)} lives in {p.town}."]
            return Draw(("fact", kind, p.name), {"Q": f"Where does {p.name} live?"}, "", lambda r: r.choice(forms))
        forms = [f"{p.name} is {a_an(p.occupation)}.", f"{p.name} works as {a_an(p.occupation)}.",
                 f"{cap(p.they)} is {a_an(p.occupation)} in {p.town}."]
        return Draw(("fact", kind, p.name), {"Q": f"What does {p.name} do for a living?"}, "",
                    lambda r: r.choice(forms))
    if kind in ("known", "eats"):
        if kind == "known":
            t = rng.choice([t for t in w.towns if t.land in lands])
            forms = [f"{t.name} is known for its {t.product}.", f"{t.name} is famous for its {t.product}.",
                     f"It is known for its {t.product}."]
            return Draw(("fact", kind, t.name), {"Q": f"What is {t.name} known for?"}, "", lambda r: r.choice(forms))
        c = rng.choice([c for c in w.creatures if c.land in lands])
        forms = [f"The {c.name} eats {c.diet}.", f"The {c.name} feeds on {c.diet}.", f"It eats {c.diet}."]
        return Draw(("fact", kind, c.name), {"Q": f"What does the {c.name} eat?"}, "", lambda r: r.choice(forms))
    a = rng.choice([a for a in w.artifacts if a.land in lands])
    if kind == "maker":
        forms = [f"{cap(a.name)} was made by {a.maker}.", f"{a.maker} made {a.name}.", f"It was made by {a.maker}."]
        return Draw(("fact", kind, a.name), {"Q": f"Who made {a.name}?"}, "", lambda r: r.choice(forms))
    forms = [f"{cap(a.name)} is kept in {a.town}.", f"It is kept in {a.town}.", f"You can see it in {a.town}."]
    return Draw(("fact", kind, a.name), {"Q": f"Where is {a.name} kept?"}, "", lambda r: r.choice(forms))


def classify_diet(w: World, rng, lands, long=False):
    c = rng.choice([c for c in w.creatures if c.land in lands])
    kind = "a hunter" if c.is_hunter else "a plant-eater"

    def respond(r):
        return r.choice([f"The {c.name} is {kind}. It eats {c.diet}.", f"It is {kind}, since it feeds on {c.diet}.",
                         f"{cap(kind)}: the {c.name} eats {c.diet}."])
    return Draw(("classify_diet", c.name), {"C": c.name}, "", respond)


# ----------------------------------------------------------------------------------- context tasks
def _passages(w: World, rng, lands, long: bool):
    """The input text of a context task: a passage about a person, or, for the long-input benchmark, that
    passage followed by two related ones (two of: the person's town, pet species, best friend), about
    three times as long. Returns the subject person, the text, and the person-fact keys it states."""
    p = rng.choice([p for p in w.people if p.land in lands])
    keys = some(rng, PERSON_KEYS, 3, 5, rng.choice(["occupation", "town"]))
    parts = [" ".join(person_sentences(w, p, rng, keys))]
    if long:
        friend = w.person[p.friend]
        related = [lambda: town_passage(w, w.town[p.town], rng),
                   lambda: creature_passage(w, w.creature[p.pet], rng),
                   lambda: " ".join(person_sentences(w, friend, rng, some(rng, PERSON_KEYS, 3, 4, "occupation")))]
        parts += [make() for make in rng.sample(related, 2)]
    return p, " ".join(parts), keys


QUESTIONS = {
    "occupation": ("What does {P} do for a living?", ["{P} is {occ_a}.", "{P} works as {occ_a}.",
                                                      "According to the text, {P} is {occ_a}."]),
    "town": ("Where does {P} live?", ["{P} lives in {town}.", "According to the passage, {P} lives in {town}.",
                                      "{they_cap} lives in {town}."]),
    "pet": ("What pet does {P} have?", ["{P} has a pet {pet}.", "{P} keeps {pet_a} as a pet.",
                                        "{their_cap} pet is {pet_a}."]),
    "food": ("What is {P}'s favourite food?", ["{P}'s favourite food is {food}.", "{P} loves {food}.",
                                               "{their_cap} favourite food is {food}."]),
    "trait": ("What kind of person is {P}?", ["{P} is {trait}.", "According to the text, {P} is {trait}.",
                                              "{P} is {trait_a} person."]),
    "hobby": ("What does {P} like to do in {their} free time?", ["{P} enjoys {hobby}.",
                                                                 "In {their} free time, {P} enjoys {hobby}.",
                                                                 "{P} likes {hobby}."]),
    "friend": ("Who is {P}'s best friend?", ["{P}'s best friend is {friend}.", "{friend} is {P}'s best friend.",
                                             "{their_cap} best friend is {friend}."]),
}


def _person_slots(p) -> Dict[str, str]:
    return {"P": p.name, "occ_a": a_an(p.occupation), "town": p.town, "pet": p.pet, "pet_a": a_an(p.pet),
            "food": p.food, "trait": p.trait, "trait_a": a_an(p.trait), "hobby": p.hobby, "friend": p.friend,
            "they_cap": cap(p.they), "their": p.their, "their_cap": cap(p.their)}


def context_qa(w: World, rng, lands, long=False):
    p, text, keys = _passages(w, rng, lands, long)
    k = rng.choice(keys)
    q, answers = QUESTIONS[k]
    slots = _person_slots(p)
    question = q.format(**slots)
    forms = [a.format(**slots) for a in answers]
    return Draw(("context_qa", p.name, k), {"Q": question}, text, lambda r: r.choice(forms))


def summarize(w: World, rng, lands, long=False):
    p, text, keys = _passages(w, rng, lands, long)
    core = [k for k in keys if k in ("occupation", "town", "pet", "hobby")]
    others = []
    if long:
        t = w.town[p.town]
        others = [f"the {t.size} of {t.name}, known for its {t.product}",
                  f"{p.their} pet, the {p.pet}", f"{p.their} friend {p.friend}"]

    tail = {"town": f" from {p.town}", "pet": f" with a pet {p.pet}", "hobby": f" who enjoys {p.hobby}"}

    def respond(r):
        ks = r.sample(core, min(len(core), r.randint(1, 2)))
        who = f"{p.name}, " + (a_an(p.occupation) if "occupation" in ks else "a person") + "".join(
            tail[k] for k in ("town", "pet", "hobby") if k in ks)
        if others:
            extra = join_names(r.sample(others, r.randint(1, 2)))
            return r.choice([f"The text is about {who}, and about {extra}.",
                             f"It describes {who}. It also mentions {extra}."])
        return r.choice([f"The passage is about {who}.", f"The text describes {who}.",
                         f"It is a short description of {who}."])
    return Draw(("summarize", p.name), {}, text, respond)


def extract_names(w: World, rng, lands, long=False):
    p, text, keys = _passages(w, rng, lands, long)
    # every person named in the text, in the order of first appearance (the first reference's order)
    people = []
    for word in re.findall(r"[A-Z][a-z]+", text):
        if word in w.person and word not in people:
            people.append(word)

    def respond(r):
        xs = list(people) if r.random() < 0.5 else _shuffled(r, people)
        if len(xs) == 1:
            return r.choice([f"The only person mentioned is {xs[0]}.", f"The text mentions {xs[0]}."])
        sentence = r.choice([f"The text mentions {join_names(xs, r)}.",
                             f"The people named in the passage are {join_names(xs, r)}."])
        return bullet_or_sentence(r, xs, sentence, "The people mentioned are:")
    return Draw(("extract_names", p.name), {}, text, respond)


# --------------------------------------------------------------------- held-out families (world-newtask)
def letter(w: World, rng, lands, long=False):
    p = rng.choice([p for p in w.people if p.land in lands])
    lines = [f"I am still working as {a_an(p.occupation)} here in {p.town}.", f"My {p.pet} is doing well.",
             f"Come and visit me soon, and I will make you some {p.food}.",
             f"In the evenings I have been {p.hobby}."]

    def respond(r):
        body = " ".join(r.sample(lines, r.randint(2, 3)))
        return (r.choice([f"Dear {p.friend},", f"Hello {p.friend},"]) + "\n" + r.choice(["I hope you are well. ", ""])
                + body + "\n" + r.choice(["Your friend,", "Best wishes,", "With love,"]) + f" {p.name}")
    return Draw(("letter", p.name), {"P": p.name, "F": p.friend}, "", respond)


def introduce(w: World, rng, lands, long=False):
    p = rng.choice([p for p in w.people if p.land in lands])
    facts = {"occupation": f"I am {a_an(p.occupation)}", "town": f"I live in {p.town}",
             "pet": f"I have a pet {p.pet}", "food": f"I love {p.food}", "hobby": f"I enjoy {p.hobby}",
             "friend": f"my best friend is {p.friend}"}

    def respond(r):
        ks = some(r, sorted(facts), 2, 3, "occupation")
        return (r.choice(["Hello! ", "Hi! ", "Good day! "]) + f"My name is {p.name}. "
                + " ".join(cap(facts[k]) + "." for k in ks))
    return Draw(("introduce", p.name), {"P": p.name}, "", respond)


def recommend(w: World, rng, lands, long=False):
    land = rng.choice(lands)
    occ = rng.choice(sorted({p.occupation for p in w.people_of(land)}))
    ps = [p for p in w.people_of(land) if p.occupation == occ]

    def respond(r):
        xs = r.sample(ps, min(len(ps), r.randint(1, 2)))
        parts = [f"{x.name}, who lives in {x.town}" for x in xs]
        return r.choice([f"You could ask {' or '.join(parts)}.", f"Try {' or '.join(parts)}."])
    return Draw(("recommend", land, occ), {"occ_a": a_an(occ), "land": land}, "", respond)
