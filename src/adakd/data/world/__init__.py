"""A small generated world and prose about it: the pretraining corpus of the `world` miniature.

The paper's students are pretrained language models that already know a lot about the world before any
instruction tuning. To reproduce that regime on a laptop the world itself is generated: a few lands, each
with its towns, people, creature species and artifacts, tied together by attributes and relations
(a person lives in a town, keeps a creature as a pet, has a best friend; a town lies by a river and is
known for its cheese; an artifact was made by a person and is kept in a town). Relations never cross
lands, so a whole land can be held out of the instruction data (the unseen-entity benchmark) while its
facts are still in the pretraining prose.

The prose is plain text, no instruction format: short passages (a person's portrait, a town, a creature,
an artifact, a short story, a census) in which every fact can be said in several ways, in any order, so
that a language model trained on it learns both the facts and many phrasings of them.

Everything is drawn from `random.Random` streams seeded by strings (stable across runs, machines and
Python versions); no iteration over sets or dicts whose order could differ.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from .vocab import (  # noqa: F401 - the vocabulary is re-exported with the world
    OCCUPATIONS, TOOLS, FOODS, TRAITS, HOBBIES, TERRAINS, TERRAIN_PLACE, TERRAIN_HABITAT, TERRAIN_ACTIVITIES,
    PRODUCTS, TOWN_SIZES, NUMBER_WORDS, COLOURS, DIETS, HUNTER_DIETS, CREATURE_SIZES, HABITS, TEMPERS,
    CREATURE_HEADS, CREATURE_TAILS, MATERIALS, OBJECTS, PURPOSES, ONSETS, VOWELS, CODAS, TOWN_ENDS, LAND_ENDS,
)

# ----------------------------------------------------------------------------------------------- entities
@dataclass
class Person:
    name: str
    land: str
    gender: str            # "f" or "m": pronouns in the prose
    occupation: str
    town: str
    pet: str               # a creature species of the same land
    food: str
    trait: str
    hobby: str
    friend: str = ""       # best friend: another person of the same land (symmetric)

    @property
    def they(self) -> str:
        return "she" if self.gender == "f" else "he"

    @property
    def their(self) -> str:
        return "her" if self.gender == "f" else "his"

    @property
    def them(self) -> str:
        return "her" if self.gender == "f" else "him"


@dataclass
class Town:
    name: str
    land: str
    size: str
    terrain: str
    product: str
    neighbour: str = ""    # the nearest town, same land


@dataclass
class Creature:
    name: str              # a species, lower case: "the mossfinch"
    land: str
    colour: str
    size: str
    habitat: str           # a terrain
    diet: str
    habit: str
    temper: str

    @property
    def is_hunter(self) -> bool:
        return self.diet in HUNTER_DIETS


@dataclass
class Artifact:
    name: str              # "the Silver Bell"
    land: str
    material: str
    maker: str             # a person of the same land
    town: str              # where it is kept
    purpose: str


@dataclass
class World:
    seed: int
    lands: List[str]
    people: List[Person] = field(default_factory=list)
    towns: List[Town] = field(default_factory=list)
    creatures: List[Creature] = field(default_factory=list)
    artifacts: List[Artifact] = field(default_factory=list)

    def __post_init__(self):
        self._index()

    def _index(self) -> None:
        self.person = {p.name: p for p in self.people}
        self.town = {t.name: t for t in self.towns}
        self.creature = {c.name: c for c in self.creatures}
        self.artifact = {a.name: a for a in self.artifacts}

    # lists in generation order (deterministic)
    def people_of(self, land: str) -> List[Person]:
        return [p for p in self.people if p.land == land]

    def towns_of(self, land: str) -> List[Town]:
        return [t for t in self.towns if t.land == land]

    def creatures_of(self, land: str) -> List[Creature]:
        return [c for c in self.creatures if c.land == land]

    def artifacts_of(self, land: str) -> List[Artifact]:
        return [a for a in self.artifacts if a.land == land]

    def residents(self, town: str) -> List[Person]:
        return [p for p in self.people if p.town == town]

    def entity_names(self, land: str | None = None) -> List[str]:
        """Every proper name (lands, towns, people, species, artifacts), optionally of one land."""
        names = [x for x in self.lands if land in (None, x)]
        for group in (self.towns, self.people, self.creatures, self.artifacts):
            names += [e.name for e in group if land in (None, e.land)]
        return names

    def land_of(self, name: str) -> str:
        for group in (self.person, self.town, self.creature, self.artifact):
            if name in group:
                return group[name].land
        if name in self.lands:
            return name
        raise KeyError(name)


@dataclass(frozen=True)
class WorldSpec:
    """The size of the world (dataset.world in the config)."""
    # Small on purpose (48 people, 20 towns, 16 species, 8 artifacts): every fact is stated many times in a
    # corpus a CPU can pretrain on (docs/world.md).
    seed: int = 0
    n_lands: int = 4
    towns_per_land: int = 5
    people_per_land: int = 12
    creatures_per_land: int = 4
    artifacts_per_land: int = 2

    @classmethod
    def from_dict(cls, d: Dict | None) -> "WorldSpec":
        known = {k: int(v) for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def _unique(rng: random.Random, make, taken: List[str]) -> str:
    for _ in range(1000):
        name = make(rng)
        if 4 <= len(name) <= 10 and name.lower() not in taken:
            taken.append(name.lower())
            return name
    raise RuntimeError("could not draw a unique name; the world is too large for the name generator")


def build_world(spec: WorldSpec = WorldSpec()) -> World:
    """The world of `spec`: the same spec gives the same world everywhere."""
    rng = random.Random(f"adakd-world/{spec.seed}/entities")
    taken: List[str] = [w for w in OCCUPATIONS + TRAITS + COLOURS + MATERIALS + PRODUCTS]
    lands = [_unique(rng, lambda r: (_syllable(r) + r.choice(LAND_ENDS)).capitalize(), taken)
             for _ in range(spec.n_lands)]
    species = [h + t for h in CREATURE_HEADS for t in CREATURE_TAILS]
    rng.shuffle(species)
    artifact_names = [f"the {m.capitalize()} {o.capitalize()}" for m in MATERIALS for o in OBJECTS]
    rng.shuffle(artifact_names)
    need = spec.n_lands * spec.creatures_per_land
    if need > len(species) or spec.n_lands * spec.artifacts_per_land > len(artifact_names):
        raise ValueError("world too large: not enough creature or artifact names")
    world = World(seed=spec.seed, lands=lands)
    for li, land in enumerate(lands):
        towns = []
        for _ in range(spec.towns_per_land):
            name = _unique(rng, lambda r: (_syllable(r) + r.choice(TOWN_ENDS)).capitalize(), taken)
            towns.append(Town(name=name, land=land, size=rng.choice(TOWN_SIZES), terrain=rng.choice(TERRAINS),
                              product=rng.choice(PRODUCTS)))
        for i, t in enumerate(towns):   # neighbours: a ring, so every town has one
            t.neighbour = towns[(i + 1) % len(towns)].name
        creatures = []
        for k in range(spec.creatures_per_land):
            creatures.append(Creature(
                name=species[li * spec.creatures_per_land + k], land=land, colour=rng.choice(COLOURS),
                size=rng.choice(CREATURE_SIZES), habitat=rng.choice(TERRAINS), diet=rng.choice(DIETS),
                habit=rng.choice(HABITS), temper=rng.choice(TEMPERS)))
        people = []
        for k in range(spec.people_per_land):
            name = _unique(rng, lambda r: (_syllable(r) + _syllable(r)).capitalize(), taken)
            people.append(Person(
                name=name, land=land, gender=rng.choice("fm"), occupation=rng.choice(OCCUPATIONS),
                # every town gets residents: the first ones go round the towns, then at random
                town=towns[k % len(towns)].name if k < 2 * len(towns) else rng.choice(towns).name,
                pet=rng.choice(creatures).name, food=rng.choice(FOODS), trait=rng.choice(TRAITS),
                hobby=rng.choice(HOBBIES)))
        order = list(range(len(people)))
        rng.shuffle(order)
        for a, b in zip(order[0::2], order[1::2]):   # best friends in pairs
            people[a].friend, people[b].friend = people[b].name, people[a].name
        if len(order) % 2:   # an odd one out befriends the first of the pairs (not symmetric)
            people[order[-1]].friend = people[order[0]].name
        artifacts = []
        for k in range(spec.artifacts_per_land):
            artifacts.append(Artifact(
                name=artifact_names[li * spec.artifacts_per_land + k], land=land,
                material=artifact_names[li * spec.artifacts_per_land + k].split()[1].lower(),
                maker=rng.choice(people).name, town=rng.choice(towns).name, purpose=rng.choice(PURPOSES)))
        world.towns += towns
        world.people += people
        world.creatures += creatures
        world.artifacts += artifacts
    world._index()
    return world


# ------------------------------------------------------------------------------------------------- prose
def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def a_an(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def join_names(names: Sequence[str], rng: random.Random | None = None) -> str:
    """'A', 'A and B', 'A, B and C' (the last comma is sometimes Oxford-style when rng is given)."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    oxford = "," if rng is not None and len(names) > 2 and rng.random() < 0.3 else ""
    return ", ".join(names[:-1]) + f"{oxford} and " + names[-1]


def person_facts(w: World, p: Person, rng: random.Random) -> Dict[str, str]:
    """One phrasing of each fact about `p`, as a sentence whose subject is `{S}` (name or pronoun)."""
    town = w.town[p.town]
    return {
        "occupation": rng.choice(["{S} is a " + p.occupation + ".", "{S} works as " + a_an(p.occupation) + ".",
                                  "By trade, {s} is " + a_an(p.occupation) + ".",
                                  "{S} earns a living as " + a_an(p.occupation) + "."]),
        "town": rng.choice(["{S} lives in " + p.town + ".", "{S} makes " + p.their + " home in " + p.town + ".",
                            "{S} comes from " + p.town + ", " + a_an(town.size) + " in " + p.land + ".",
                            "{S} lives in the " + town.size + " of " + p.town + "."]),
        "pet": rng.choice(["{S} has a pet " + p.pet + ".", "{S} keeps " + a_an(p.pet) + " as a pet.",
                           cap(p.their) + " pet is " + a_an(p.pet) + ".",
                           "{S} is never far from " + p.their + " " + p.pet + "."]),
        "food": rng.choice(["{S} loves " + p.food + ".", cap(p.their) + " favourite food is " + p.food + ".",
                            "{S} likes to eat " + p.food + ".",
                            "Nothing makes " + p.them + " happier than " + p.food + "."]),
        "trait": rng.choice(["{S} is known to be " + p.trait + ".", "People say that {s} is " + p.trait + ".",
                             "{S} is " + a_an(p.trait) + " person.",
                             "Everyone agrees that {s} is very " + p.trait + "."]),
        "hobby": rng.choice(["In " + p.their + " free time, {s} enjoys " + p.hobby + ".",
                             "{S} likes " + p.hobby + ".", cap(p.their) + " favourite pastime is " + p.hobby + ".",
                             "{S} spends " + p.their + " evenings " + p.hobby + "."]),
        "friend": rng.choice(["{S} is a good friend of " + p.friend + ".",
                              cap(p.their) + " best friend is " + p.friend + ".",
                              "{S} and " + p.friend + " are old friends.",
                              "{S} often visits " + p.their + " friend " + p.friend + "."]),
    }


def fill(sentence: str, subject: str) -> str:
    """Put the subject (a name or a pronoun) into a fact sentence."""
    return cap(sentence.replace("{S}", cap(subject)).replace("{s}", subject))


def person_sentences(w: World, p: Person, rng: random.Random, keys: Sequence[str]) -> List[str]:
    """Sentences for the facts `keys`, in that order; the first names the person, the others mostly use
    the pronoun. Occupation and town are sometimes merged into one sentence."""
    facts = person_facts(w, p, rng)
    out, keys = [], list(keys)
    while keys:
        k = keys.pop(0)
        subject = p.name if not out or rng.random() < 0.4 else p.they
        if k == "occupation" and "town" in keys and rng.random() < 0.5:
            keys.remove("town")
            s = rng.choice([cap(subject) + " is " + a_an(p.occupation) + " who lives in " + p.town + ".",
                            cap(subject) + " is " + a_an(p.occupation) + " from " + p.town + ".",
                            cap(subject) + " works as " + a_an(p.occupation) + " in " + p.town + "."])
            out.append(s)
        else:
            out.append(fill(facts[k], subject))
    return out


PERSON_KEYS = ["occupation", "town", "pet", "food", "trait", "hobby", "friend"]
TOWN_KEYS = ["kind", "setting", "product", "neighbour", "residents"]
CREATURE_KEYS = ["look", "habitat", "diet", "habit", "temper"]
ARTIFACT_KEYS = ["material", "maker", "place", "purpose"]


def town_sentences(w: World, t: Town, rng: random.Random, keys: Sequence[str]) -> List[str]:
    residents = w.residents(t.name)
    rng_res = rng.sample(residents, min(len(residents), rng.randint(2, 3)))
    facts = {
        "kind": rng.choice([f"{{S}} is {a_an(t.size)} in {t.land}.", f"{{S}} is {a_an(t.size)} in the land of {t.land}.",
                            f"{{S}} is one of the {t.size}s of {t.land}."]),
        "setting": rng.choice([f"{{S}} lies {TERRAIN_PLACE[t.terrain]}.", f"{{S}} was built {TERRAIN_PLACE[t.terrain]}.",
                               f"{{S}} sits {TERRAIN_PLACE[t.terrain]}."]),
        "product": rng.choice([f"{{S}} is known for its {t.product}.", f"{{S}} is famous for its {t.product}.",
                               f"The {t.product} of {t.name} is sold in every market of {t.land}.",
                               f"People come to {{s}} to buy {t.product}."]),
        "neighbour": rng.choice([f"The nearest town to {t.name} is {t.neighbour}.",
                                 f"{{S}} is not far from {t.neighbour}.",
                                 f"From {t.name} it is a short walk to {t.neighbour}."]),
        "residents": rng.choice([f"Among the people of {t.name} are {join_names([p.name for p in rng_res], rng)}.",
                                 f"{join_names([p.name for p in rng_res], rng)} live in {t.name}."]
                                if len(rng_res) > 1 else [f"{rng_res[0].name} lives in {t.name}."]),
    }
    out = []
    for k in keys:
        subject = t.name if not out or rng.random() < 0.5 else "it"
        out.append(fill(facts[k], subject))
    return out


def creature_sentences(w: World, c: Creature, rng: random.Random, keys: Sequence[str]) -> List[str]:
    facts = {
        "look": rng.choice([f"{{S}} is {a_an(c.size)} {c.colour} creature of {c.land}.",
                            f"{{S}} is {a_an(c.size)}, {c.colour} animal.",
                            f"{{S}} is {c.colour} and {c.size}."]),
        "habitat": rng.choice([f"{{S}} lives {TERRAIN_HABITAT[c.habitat]}.",
                               f"{{S}} makes its home {TERRAIN_HABITAT[c.habitat]}.",
                               f"{{S}} is found {TERRAIN_HABITAT[c.habitat]}."]),
        "diet": rng.choice([f"{{S}} eats {c.diet}.", f"{{S}} feeds on {c.diet}.", f"{{S}} lives on {c.diet}."]),
        "habit": rng.choice([f"{{S}} {c.habit}.", f"It is said that {{s}} {c.habit}."]),
        "temper": rng.choice([f"{{S}} is {c.temper}.", f"{{S}} is known to be {c.temper}.",
                              f"{{S}} has {a_an(c.temper)} nature."]),
    }
    out = []
    for k in keys:
        subject = f"the {c.name}" if not out or rng.random() < 0.4 else "it"
        out.append(fill(facts[k], subject))
    return out


def artifact_sentences(w: World, a: Artifact, rng: random.Random, keys: Sequence[str]) -> List[str]:
    facts = {
        "material": rng.choice([f"{{S}} is made of {a.material}.", f"{{S}} was made from {a.material}."]),
        "maker": rng.choice([f"{{S}} was made by {a.maker}.", f"{a.maker} made {{s}}.",
                             f"{{S}} is the work of {a.maker}."]),
        "place": rng.choice([f"{{S}} is kept in {a.town}.", f"Today {{s}} is kept in {a.town}.",
                             f"{{S}} can be seen in {a.town}."]),
        "purpose": rng.choice([f"{{S}} {a.purpose}.", f"People say that {{s}} {a.purpose}.",
                               f"It is believed that {{s}} {a.purpose}."]),
    }
    out = []
    for k in keys:
        subject = a.name if not out or rng.random() < 0.5 else "it"
        if k == "maker" and subject == "it" and facts[k].startswith(a.maker):
            subject = a.name   # "Talren made it." reads oddly at the start of a later sentence
        out.append(fill(facts[k], subject))
    return out


def some(rng: random.Random, keys: Sequence[str], lo: int, hi: int, first: str | None = None) -> List[str]:
    """A random subset of `keys` (lo..hi of them) in random order, optionally starting with `first`."""
    rest = [k for k in keys if k != first]
    chosen = rng.sample(rest, min(len(rest), rng.randint(lo, hi)))
    return ([first] if first else []) + chosen


# --------------------------------------------------------------------------------------- passage kinds
def person_passage(w: World, p: Person, rng: random.Random) -> str:
    first = rng.choice(["occupation", "town", None])
    return " ".join(person_sentences(w, p, rng, some(rng, PERSON_KEYS, 3, 6, first)))


def town_passage(w: World, t: Town, rng: random.Random) -> str:
    return " ".join(town_sentences(w, t, rng, some(rng, TOWN_KEYS, 2, 4, "kind" if rng.random() < 0.6 else None)))


def creature_passage(w: World, c: Creature, rng: random.Random) -> str:
    return " ".join(creature_sentences(w, c, rng, some(rng, CREATURE_KEYS, 2, 4, "look" if rng.random() < 0.5 else None)))


def artifact_passage(w: World, a: Artifact, rng: random.Random) -> str:
    return " ".join(artifact_sentences(w, a, rng, some(rng, ARTIFACT_KEYS, 2, 3)))


def story_passage(w: World, p: Person, rng: random.Random) -> str:
    """A short narrative; every fact it uses is true of the world."""
    friend = w.person[p.friend]
    town, ftown = w.town[p.town], w.town[friend.town]
    when = rng.choice(["One morning", "One evening", "Last spring", "Early one day", "On a cold winter day"])
    opening = rng.choice([
        f"{when}, {p.name} the {p.occupation} left {p.town} with {p.their} {p.pet}.",
        f"{when}, {p.name} set out from {p.town} to visit {p.their} friend {friend.name}.",
        f"{when}, {p.name} and {p.their} {p.pet} walked out of {p.town}."])
    middle = []
    if ftown.name != town.name:
        middle.append(rng.choice([f"The road to {ftown.name} was long, but {p.they} did not mind.",
                                  f"{cap(p.they)} walked all the way to {ftown.name}, where {friend.name} lives."]))
    else:
        middle.append(f"{friend.name} lives in {town.name} too, so the walk was short.")
    middle.append(rng.choice([f"{cap(p.they)} brought some {p.food}, because it is {p.their} favourite food.",
                              f"In {p.their} bag there was {p.food} for the journey.",
                              f"{cap(p.they)} also took {p.their} {TOOLS[p.occupation]}."]))
    middle.append(rng.choice([f"{friend.name}, who is {a_an(friend.occupation)}, was glad to see {p.them}.",
                              f"{friend.name} was busy with {friend.their} work as {a_an(friend.occupation)}.",
                              f"Together they spent the afternoon {friend.hobby}."]))
    rng.shuffle(middle)
    ending = rng.choice([f"In the evening {p.name} went back home to {p.town}.",
                         "It was a good day for both of them.",
                         f"The {p.pet} fell asleep on the way home."])
    return " ".join([opening] + middle[: rng.randint(2, 3)] + [ending])


def census_passage(w: World, land: str, rng: random.Random) -> str:
    """Who lives where, who does what, which creatures live in a land."""
    kind = rng.choice(["town", "occupation", "creatures", "towns", "pets"])
    if kind == "town":
        t = rng.choice(w.towns_of(land))
        res = [p.name for p in w.residents(t.name)]
        rng.shuffle(res)
        return rng.choice([f"The people of {t.name} are {join_names(res, rng)}.",
                           f"In {t.name} live {join_names(res, rng)}."]) if len(res) > 1 else \
            f"Only {res[0]} lives in {t.name}."
    if kind == "occupation":
        occ = rng.choice(sorted({p.occupation for p in w.people_of(land)}))
        names = [p.name for p in w.people_of(land) if p.occupation == occ]
        rng.shuffle(names)
        if len(names) == 1:
            return f"The only {occ} in {land} is {names[0]}."
        return rng.choice([f"The {occ}s of {land} are {join_names(names, rng)}.",
                           f"In {land}, {join_names(names, rng)} work as {occ}s."])
    if kind == "creatures":
        cs = ["the " + c.name for c in w.creatures_of(land)]
        rng.shuffle(cs)
        return rng.choice([f"The creatures of {land} include {join_names(cs, rng)}.",
                           f"In {land} one can meet {join_names(cs, rng)}."])
    if kind == "towns":
        ts = [t.name for t in w.towns_of(land)]
        rng.shuffle(ts)
        return rng.choice([f"The towns of {land} are {join_names(ts, rng)}.",
                           f"{land} has {NUMBER_WORDS[len(ts)]} towns: {join_names(ts, rng)}."])
    c = rng.choice(w.creatures_of(land))
    owners = [p.name for p in w.people_of(land) if p.pet == c.name]
    if not owners:
        return f"Nobody in {land} keeps the {c.name} as a pet; it is a wild creature."
    rng.shuffle(owners)
    return rng.choice([f"{join_names(owners, rng)} {'keeps' if len(owners) == 1 else 'keep'} the {c.name} as a pet.",
                       f"The {c.name} is kept as a pet by {join_names(owners, rng)}."])


PASSAGE_KINDS = ["person", "town", "creature", "artifact", "story", "census"]
PASSAGE_WEIGHTS = [40, 12, 12, 8, 16, 12]


def passage(w: World, rng: random.Random, kind: str | None = None, land: str | None = None) -> Tuple[str, str, str]:
    """(kind, subject name, text) of one random passage, optionally of a given kind and land."""
    kind = kind or rng.choices(PASSAGE_KINDS, weights=PASSAGE_WEIGHTS)[0]
    lands = [land] if land else w.lands
    if kind in ("person", "story"):
        p = rng.choice([p for p in w.people if p.land in lands])
        return kind, p.name, (person_passage if kind == "person" else story_passage)(w, p, rng)
    if kind == "town":
        t = rng.choice([t for t in w.towns if t.land in lands])
        return kind, t.name, town_passage(w, t, rng)
    if kind == "creature":
        c = rng.choice([c for c in w.creatures if c.land in lands])
        return kind, c.name, creature_passage(w, c, rng)
    if kind == "artifact":
        a = rng.choice([a for a in w.artifacts if a.land in lands])
        return kind, a.name, artifact_passage(w, a, rng)
    if kind == "census":
        land = rng.choice(lands)
        return kind, land, census_passage(w, land, rng)
    raise ValueError(f"unknown passage kind {kind!r}; valid: {PASSAGE_KINDS}")


def corpus(w: World, n: int, stream: str = "train") -> List[str]:
    """`n` pretraining passages from the stream `stream` ("train" or "heldout": the same world, other draws)."""
    rng = random.Random(f"adakd-world/{w.seed}/corpus/{stream}")
    return [passage(w, rng)[2] for _ in range(n)]
