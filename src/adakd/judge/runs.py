"""The two sides of a comparison and their matched answers.

A side is named by a run directory (or its metrics.json), by the Hydra overrides its `adakd-run` command was
given (composed as adakd-run composes them, the directory found by experiment.tasks.run_dir_for; "" is the
built-in default), or -- for side B only -- by a baseline row of side A: `teacher`, `sft`, `student_init`
(the directories A's metrics.json records). Either side must have finished.

Pairs are matched by benchmark, example id and generation seed. Runs whose benchmark files (sha256) or
generation seeds differ are refused, and so is an example whose prompt or reference differs between them:
their answers are not answers to the same question.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError, DataError, UserError
from ..experiment.tables import _composer
from ..experiment.tasks import BASELINE_LABELS, BASELINES, is_finished, run_dir_for, task_of
from ..io import read_json, read_jsonl_prefix


@dataclass
class Side:
    label: str
    dir: Path
    metrics: Dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metrics.get("run", {}).get("name") or self.dir.name)


@dataclass(frozen=True)
class Pair:
    benchmark: str
    id: str
    seed: int
    instruction: str
    reference: str
    answer_a: str        # side A's prediction
    answer_b: str        # side B's prediction


def label_of(metrics: Dict[str, Any]) -> str:
    """The row label a run has in the ROUGE-L tables (experiment.tasks.Task.label), from its metrics.json."""
    run = metrics.get("run", {})
    task = run.get("task")
    if task == "eval_teacher":
        return "teacher"
    if task == "eval_init":
        return BASELINE_LABELS["student_init"]
    if task == "sft":
        return BASELINE_LABELS["sft"]
    tag = run.get("adakd", "plain")
    return f"student {run.get('method', '?')}" + ("" if tag == "plain" else f" + {tag}")


def _finished(path: Path, what: str) -> Side:
    if path.is_file() and path.name == "metrics.json":
        path = path.parent
    if not is_finished(path):
        raise UserError(f"{what}: {path} holds no finished run (no metrics.json with status ok): run it first")
    metrics = read_json(path / "metrics.json")
    return Side(label_of(metrics), path, metrics)


def resolve(spec: str, other: Optional[Side] = None, what: str = "run") -> Side:
    """A side from its spec (see the module docstring); `other` is side A when resolving side B."""
    spec = spec.strip()
    if other is not None and spec in BASELINES:
        rows = other.metrics.get("baselines") or {}
        if spec not in rows:
            raise UserError(f"{what}: {other.dir} has no baseline row {spec!r} (it has {sorted(rows)}): run it "
                            f"with run.baselines including {spec}")
        side = _finished(Path(rows[spec]["dir"]), what)
        side.label = BASELINE_LABELS[spec]
        return side
    if spec and Path(spec).exists():
        return _finished(Path(spec), what)
    if spec and "=" not in spec:
        raise UserError(f"{what}: {spec!r} is neither a run directory nor Hydra overrides (key=value ...)"
                        + ("" if other is None else f" nor a baseline row ({', '.join(BASELINES)})"))
    compose, _ = _composer()
    cfg = compose(shlex.split(spec))
    side = _finished(run_dir_for(cfg), f"{what} ({spec or 'the built-in default'})")
    side.label = task_of(cfg).label(cfg)
    return side


# ----------------------------------------------------------------------------------------------- matching
_ALPACA = re.compile(r"### Instruction:\n(?P<instruction>.*?)\n\n(?:### Input:\n(?P<input>.*?)\n\n)?### Response:",
                     re.DOTALL)


def instruction_of(prompt: str) -> str:
    """The task as the judge should read it: the Alpaca prompt's instruction (and input), without the
    template's boilerplate; a prompt in another format is given whole."""
    m = _ALPACA.search(prompt)
    if not m:
        return prompt.strip()
    text = m.group("instruction").strip()
    if m.group("input"):
        text += "\n\n" + m.group("input").strip()
    return text


def _predictions(side: Side, bench: str) -> Dict[Tuple[str, int], Dict[str, Any]]:
    path = side.dir / "predictions" / f"{bench}.jsonl"
    if not path.is_file():
        raise DataError(f"{side.dir}: no predictions for benchmark {bench!r} ({path})")
    return {(str(r["id"]), int(r["seed"])): r for r in read_jsonl_prefix(path)}


def _files(side: Side, bench: str) -> List[Tuple[str, str]]:
    files = (side.metrics.get("protocol", {}).get("data_files") or {}).get(bench) or []
    return sorted((Path(f.get("path", "")).name, str(f.get("sha256"))) for f in files if isinstance(f, dict))


def check_comparable(a: Side, b: Side, benches: Sequence[str]) -> None:
    seeds_a = sorted(a.metrics.get("protocol", {}).get("seeds") or [])
    seeds_b = sorted(b.metrics.get("protocol", {}).get("seeds") or [])
    if seeds_a != seeds_b:
        raise ConfigError(f"the runs were evaluated with different generation seeds ({a.dir.name}: {seeds_a}, "
                          f"{b.dir.name}: {seeds_b}): their answers cannot be paired")
    for bench in benches:
        if bench not in b.metrics.get("rougeL", {}):
            raise ConfigError(f"{b.dir.name} was not evaluated on {bench!r} (it has {list(b.metrics['rougeL'])})")
        if _files(a, bench) != _files(b, bench):
            raise DataError(f"benchmark {bench!r}: the runs read different files ({a.dir.name}: {_files(a, bench)}; "
                            f"{b.dir.name}: {_files(b, bench)}): their answers cannot be paired")


def match(a: Side, b: Side, benchmarks: Sequence[str] = (), seeds: Sequence[int] = (),
          max_examples: Optional[int] = None) -> List[Pair]:
    """The pairs to judge, in side A's order: per benchmark its first `max_examples` examples, every seed."""
    benches = list(benchmarks) or list(a.metrics.get("rougeL", {}))
    unknown = [x for x in benches if x not in a.metrics.get("rougeL", {})]
    if unknown:
        raise ConfigError(f"judge.benchmarks {unknown}: {a.dir.name} has {list(a.metrics.get('rougeL', {}))}")
    check_comparable(a, b, benches)
    run_seeds = list(a.metrics.get("protocol", {}).get("seeds") or [])
    use_seeds = list(seeds) or run_seeds
    if set(use_seeds) - set(run_seeds):
        raise ConfigError(f"judge.seeds {sorted(set(use_seeds) - set(run_seeds))}: the runs have {run_seeds}")
    pairs: List[Pair] = []
    for bench in benches:
        pa, pb = _predictions(a, bench), _predictions(b, bench)
        ids = list(dict.fromkeys(i for i, _ in pa))[: max_examples or None]
        for ex in ids:
            for seed in use_seeds:
                ra, rb = pa.get((ex, seed)), pb.get((ex, seed))
                if ra is None or rb is None:
                    who = a if ra is None else b
                    raise DataError(f"{who.dir}: no prediction for {bench} example {ex!r} seed {seed} (were both "
                                    "runs evaluated with the same eval.max_samples?)")
                if instruction_of(ra["prompt"]) != instruction_of(rb["prompt"]) or \
                        ra.get("references") != rb.get("references"):
                    raise DataError(f"{bench} example {ex!r}: the runs' prompts or references differ")
                refs = ra.get("references") or [""]
                pairs.append(Pair(bench, ex, seed, instruction_of(ra["prompt"]), str(refs[0]),
                                  str(ra["prediction"]), str(rb["prediction"])))
    return pairs
