"""A synthetic instruction-following task family, generated deterministically.

The built-in default needs data that a laptop CPU can learn from in minutes, with no download. The
vocabulary of content words is closed and small (every word is a single BPE token after training the
tokenizer on this corpus), so copying a word from the instruction is a one-token lookup that a small
transformer learns quickly. Three kinds of task:

* fixed-answer tasks with copying (opposite, first / last word, category, repeat, successor, addition,
  counting): one right answer;
* open tasks with several right answers (name one / two members of a group, a sentence about an
  animal, a colour that a fruit can have): every right answer is a reference, ROUGE-L takes the max,
  and the teacher's distribution over the answers is information that hard labels do not carry;
* the Alpaca template with and without an input block, as in the real benchmarks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from .example import Example
from .prompts import render_prompt

GROUPS: Dict[str, List[str]] = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "purple", "pink", "brown", "gray"],
    "animal": ["dog", "cat", "horse", "cow", "sheep", "lion", "tiger", "bear", "wolf", "fox", "rabbit",
               "mouse", "duck", "goat", "pig", "deer"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon",
              "kiwi", "lime"],
    "tool": ["hammer", "knife", "spoon", "saw", "brush", "shovel", "drill", "wrench", "ladder", "rope"],
    "name": ["anna", "ben", "carl", "dora", "emma", "finn", "gina", "hugo", "ida", "jack"],
}
OPPOSITES: List[Tuple[str, str]] = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("old", "young"), ("high", "low"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"), ("long", "short"), ("thick", "thin"),
    ("open", "closed"),
]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
           "nineteen", "twenty"]
FRUIT_COLORS: Dict[str, List[str]] = {
    "apple": ["red", "green", "yellow"], "banana": ["yellow", "green"], "cherry": ["red", "black"],
    "grape": ["green", "purple"], "lemon": ["yellow"], "mango": ["green", "yellow"], "peach": ["pink", "yellow"],
    "pear": ["green", "yellow", "brown"], "plum": ["purple", "red"], "melon": ["green", "yellow"],
    "kiwi": ["brown", "green"], "lime": ["green"],
}
VERBS = ["runs", "sleeps", "eats", "jumps", "walks"]
ADVERBS = ["slowly", "quickly", "quietly", "happily"]
ALL_WORDS = sorted({w for ws in GROUPS.values() for w in ws})


@dataclass(frozen=True)
class _Item:
    task: str
    instruction: str
    input: str
    references: List[str]   # references[0] is drawn at random among the right answers: the SFT target


def _word_list(rng: random.Random, lo: int = 2, hi: int = 6) -> List[str]:
    return rng.sample(ALL_WORDS, rng.randint(lo, hi))


def _opposite(rng):
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return _Item("opposite", f"What is the opposite of {a}?", "", [f"The opposite of {a} is {b}."])


def _first_word(rng):
    ws = _word_list(rng)
    return _Item("first_word", "What is the first word in the list?", ", ".join(ws),
                 [f"The first word is {ws[0]}."])


def _last_word(rng):
    ws = _word_list(rng)
    return _Item("last_word", "What is the last word in the list?", ", ".join(ws),
                 [f"The last word is {ws[-1]}."])


def _count(rng):
    ws = _word_list(rng, 1, 7)
    return _Item("count", "How many words are in the list?", ", ".join(ws),
                 [f"There are {NUMBERS[len(ws)]} words."])


def _category(rng):
    group = rng.choice(sorted(GROUPS))
    w = rng.choice(GROUPS[group])
    return _Item("category", f"Which group does the word {w} belong to?", "", [f"The word {w} is a {group}."])


def _repeat(rng):
    w = rng.choice(ALL_WORDS)
    n = rng.randint(2, 4)
    return _Item("repeat", f"Repeat the word {w} {NUMBERS[n]} times.", "", [" ".join([w] * n)])


def _successor(rng):
    x = rng.randint(0, 19)
    return _Item("successor", f"What number comes after {NUMBERS[x]}?", "",
                 [f"The number after {NUMBERS[x]} is {NUMBERS[x + 1]}."])


def _add(rng):
    x, y = rng.randint(0, 10), rng.randint(0, 10)
    return _Item("add", f"What is {NUMBERS[x]} plus {NUMBERS[y]}?", "",
                 [f"{NUMBERS[x]} plus {NUMBERS[y]} is {NUMBERS[x + y]}."])


def _shuffled_answers(rng, answers: List[str]) -> List[str]:
    answers = list(answers)
    rng.shuffle(answers)   # the first is the SFT target: a random right answer
    return answers


def _name_one(rng):
    group = rng.choice(sorted(GROUPS))
    return _Item("name_one", f"Name one {group}.", "",
                 _shuffled_answers(rng, [f"One {group} is {w}." for w in GROUPS[group]]))


def _name_two(rng):
    group = rng.choice(["color", "fruit", "tool", "name"])
    ws = GROUPS[group]
    answers = [f"Two of them are {a} and {b}." for a in ws for b in ws if a != b]
    return _Item("name_two", f"Name two different words of the group {group}.", "", _shuffled_answers(rng, answers))


def _sentence(rng):
    a = rng.choice(GROUPS["animal"])
    answers = [f"The {a} {v} {d}." for v in VERBS for d in ADVERBS]
    return _Item("sentence", f"Write a short sentence about a {a}.", "", _shuffled_answers(rng, answers))


def _fruit_color(rng):
    f = rng.choice(GROUPS["fruit"])
    return _Item("fruit_color", f"What color can a {f} have?", "",
                 _shuffled_answers(rng, [f"A {f} can be {c}." for c in FRUIT_COLORS[f]]))


TASKS: Dict[str, Callable[[random.Random], _Item]] = {
    "opposite": _opposite, "first_word": _first_word, "last_word": _last_word, "count": _count,
    "category": _category, "repeat": _repeat, "successor": _successor, "add": _add,
    "name_one": _name_one, "name_two": _name_two, "sentence": _sentence, "fruit_color": _fruit_color,
}
SPLIT_OFFSETS = {"train": 0, "dev": 1, "test": 2}


def generate(split: str, n: int, seed: int = 0, tasks: List[str] | None = None) -> List[Example]:
    """`n` examples of `split`; the same (split, n, seed, tasks) always gives the same list.

    Each split draws from its own random stream, so changing the size of one split never changes another.
    Tasks are interleaved round-robin, so every prefix of a split is balanced across tasks.
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown synthetic split {split!r}; valid: {sorted(SPLIT_OFFSETS)}")
    names = list(tasks) if tasks else list(TASKS)
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown synthetic task(s) {unknown}; valid: {sorted(TASKS)}")
    rng = random.Random(f"adakd-synthetic/{seed}/{split}")
    out = []
    for i in range(n):
        item = TASKS[names[i % len(names)]](rng)
        out.append(Example(
            instruction=item.instruction, input=item.input,
            prompt=render_prompt(item.instruction, item.input),
            references=item.references, id=f"synthetic-{split}-{i}", meta={"task": item.task},
        ))
    return out


def corpus(examples: List[Example]) -> List[str]:
    """Texts to train the tokenizer on: prompts and every reference."""
    texts = []
    for ex in examples:
        texts.append(ex.prompt)
        texts.extend(ex.references[:4])
    return texts
