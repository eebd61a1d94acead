"""The judge's prompt and the parser of its verdict.

The protocol (the AdaKD authors' `llm_as_judge`, in our own words): the judge sees the instruction, the
ground-truth response and two answers labelled A and B, reasons briefly, and ends with [[A]] (A is better),
[[B]] (B is better) or [[C]] (a tie). Each pair is asked twice with the answers swapped (adakd.judge.scoring).

A template is a system message and a user message with the fields {instruction}, {reference}, {answer_a},
{answer_b}. For the completions endpoint the two messages are rendered here into the judge's chat format
(ChatML, which Qwen and SmolLM2 use), as the authors' script does; for the chat endpoint they are sent as
messages and the server applies the model's own template.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..errors import ConfigError

SYSTEM = ("You are an impartial expert grader. You compare two answers to the same instruction and decide which "
          "one is better.")

_TASK = """Read the instruction{ref_clause} and the two answers below.

[Instruction]
{{instruction}}
{ref_block}
[Answer A]
{{answer_a}}

[Answer B]
{{answer_b}}

Decide which answer fulfils the instruction better{ref_goal}, then helpfulness, relevance and completeness. \
Do not let the order of the answers, their length or their style sway you. Reason in a few short sentences \
only, then finish with exactly one verdict on the last line: [[A]] if Answer A is better, [[B]] if Answer B is \
better, [[C]] if they are equally good or equally bad."""

TEMPLATES: Dict[str, Dict[str, str]] = {
    "pairwise-reference": {"system": SYSTEM, "user": _TASK.format(
        ref_clause=", the reference answer written for it",
        ref_block="\n[Reference answer]\n{reference}\n",
        ref_goal=": judge correctness first, against the reference answer (an answer need not repeat it word "
                 "for word)")},
    "pairwise": {"system": SYSTEM, "user": _TASK.format(ref_clause="", ref_block="", ref_goal=": judge "
                                                                                            "correctness first")},
}
FIELDS = ("instruction", "reference", "answer_a", "answer_b")
APIS = ("completions", "chat")
PROMPT_FORMATS = ("chatml", "plain")
VERDICTS = ("A", "B", "C")


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str

    @property
    def digest(self) -> str:
        """Identifies the wording: a changed template is a new cache key, never a stale judgment."""
        return hashlib.sha256(json.dumps([self.system, self.user]).encode()).hexdigest()[:16]


def load_template(spec: str) -> Template:
    """A built-in template by name, or a YAML file with `system` and `user` (the user text uses the fields)."""
    if spec in TEMPLATES:
        return Template(spec, **TEMPLATES[spec])
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"judge template {spec!r} is neither a built-in ({list(TEMPLATES)}) nor a file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise ConfigError(f"{path}: a judge template needs a `user` text (and optionally `system`)")
    t = Template(path.stem, str(data.get("system") or ""), data["user"])
    try:
        t.user.format(**{f: "" for f in FIELDS})
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{path}: the user text may use only the fields {list(FIELDS)} ({e!r}); write "
                          "literal braces as {{ }}") from None
    return t


def messages(t: Template, instruction: str, reference: str, answer_a: str, answer_b: str) -> List[Dict[str, str]]:
    user = t.user.format(instruction=instruction, reference=reference, answer_a=answer_a, answer_b=answer_b)
    return ([{"role": "system", "content": t.system}] if t.system else []) + [{"role": "user", "content": user}]


def completion_prompt(msgs: List[Dict[str, str]], prompt_format: str) -> str:
    """The messages as one prompt for the completions endpoint, ending where the judge's turn begins."""
    if prompt_format == "chatml":
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + \
            "<|im_start|>assistant\n"
    if prompt_format == "plain":
        return "\n\n".join(m["content"] for m in msgs) + "\n\n"
    raise ConfigError(f"judge.prompt_format={prompt_format!r}; valid: {list(PROMPT_FORMATS)}")


def request_body(api: str, msgs: List[Dict[str, str]], prompt_format: str) -> Dict[str, Any]:
    """The prompt part of a request: `messages` for chat, `prompt` (+ the ChatML end marker as a stop) else."""
    if api == "chat":
        return {"messages": msgs}
    if api == "completions":
        body: Dict[str, Any] = {"prompt": completion_prompt(msgs, prompt_format)}
        if prompt_format == "chatml":
            body["stop"] = ["<|im_end|>"]
        return body
    raise ConfigError(f"judge.api={api!r}; valid: {list(APIS)}")


# ------------------------------------------------------------------------------------------------ verdicts
_MARK = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    label: Optional[str]      # "A", "B", "C", or None when the text holds no usable verdict
    problem: str = ""         # why not: "no verdict", "conflicting verdicts [[A]] [[B]]", "unfinished thinking"


def parse_verdict(text: str) -> Verdict:
    """The judge's verdict: the [[A]] / [[B]] / [[C]] marks outside a <think> block must all agree.

    Strict on purpose: a text with no mark, or with marks that disagree (a small judge often echoes the
    instructions' "[[A]] if ..., [[B]] if ..."), is a parse failure, counted as such -- never read as a tie.
    """
    body = _THINK.sub("", text)
    if "<think>" in body:
        return Verdict(None, "unfinished thinking (no </think>): raise judge.max_tokens")
    marks = _MARK.findall(body)
    if not marks:
        return Verdict(None, "no verdict")
    if len(set(marks)) > 1:
        return Verdict(None, "conflicting verdicts " + " ".join(f"[[{m}]]" for m in dict.fromkeys(marks)))
    return Verdict(marks[0])
