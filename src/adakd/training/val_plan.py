"""How much dev validation a run can afford: the schedule of training.validation, planned from a budget.

One dev validation runs the student (and, for val_kd, the teacher) forward over dev sequences and samples up
to eval.max_new_tokens tokens for each dev prompt scored by ROUGE-L. On the built-in miniatures that is a few
per cent of the training; with a real model and a short step-based run it is not: 20 steps of the pruned
SmolLM2-135M on a 2-core CPU spent 11.5 times its training on six validations (50 generations of up to 128
tokens, 1,000 dev sequences each). So where the config leaves them open (null), the number of validations,
of scored generations and of dev sequences follow from `train.val_budget`: validation may cost at most that
share of the training, by an estimate. Values set in the config are kept; a one-line warning says when they
exceed the budget.

The estimate comes from the config, the data and the models' parameter counts, never from measured time: the
same command plans the same schedule, so a rerun or a resume after a kill finds the same validation rows (and,
with train.select=best_dev, the same selected student). Validation never changes the training itself. The
unit is one parameter used for one token in a forward pass:
    training     steps x global batch x mean training sequence length x (3 x student [+ live teacher])
    dev losses   sequences x mean dev sequence length x (student [+ teacher, for val_kd])
    generation   prompts x (mean dev sequence length + DECODE_COST x eval.max_new_tokens) x student
Generation is taken to run to max_new_tokens (the worst case), and recipes that also sample during training
(GKD, DistiLLM) are costed as plain training: both err towards less validation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from .validation import validation_steps

# One token sampled at a time costs this many tokens of a batched forward pass: each decoding step is a small,
# memory-bound pass plus per-row sampling. Measured 15-17 on a (loaded) 2-core CPU with SmolLM2-135M's pruned
# student, 10 dev prompts in one batch, 128 new tokens, against its training step and dev forward passes timed
# in the same process (docs/scale.md, "Dev validation's cost").
DECODE_COST = 16.0
DEFAULT_SAMPLES = 50          # dev prompts scored by ROUGE-L when nothing limits them
MIN_SAMPLES = 10              # fewer make the dev ROUGE-L curve noise: then none are generated
MIN_EXAMPLES = 16             # dev sequences for val_ce / val_kd, at the least
MIN_VALIDATIONS = 2           # before the first step and after the last: where every curve starts and ends


def setting_errors(train_cfg: Any) -> List[str]:
    """Range errors of the settings this module reads (train.val_budget, train.val_examples), one line each."""
    errors = []
    budget, examples = train_cfg.get("val_budget"), train_cfg.get("val_examples")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        errors.append(f"train.val_budget={budget} must be a finite share > 0 of the training's cost (null: no limit)")
    if examples is not None and examples < 1:
        errors.append(f"train.val_examples={examples} is out of range [1, inf] (null: every dev sequence)")
    return errors


@dataclass(frozen=True)
class ValCosts:
    """Estimated costs (parameter x token units): the whole training, and one validation's parts per item."""
    train: float
    per_example: float        # one dev sequence through the student (and the teacher)
    per_sample: float         # one dev prompt's generation by the student


def estimate_costs(*, total_steps: int, global_batch: int, train_len: float, dev_len: float,
                   student_params: int, teacher_params: int, teacher_in_training: bool, teacher_in_validation: bool,
                   max_new_tokens: int) -> ValCosts:
    """`train_len` / `dev_len`: mean token length of the training / dev sequences; `teacher_params` counts only
    where the flags say the teacher runs (live in training; for val_kd in validation)."""
    per_train_token = 3.0 * student_params + (teacher_params if teacher_in_training else 0)
    return ValCosts(train=float(total_steps) * global_batch * train_len * per_train_token,
                    per_example=dev_len * (student_params + (teacher_params if teacher_in_validation else 0)),
                    per_sample=(dev_len + DECODE_COST * max_new_tokens) * student_params)


@dataclass(frozen=True)
class ValPlan:
    steps: List[int]          # validate after these steps (0: before the first)
    samples: int              # dev prompts generated and scored by ROUGE-L
    examples: int             # dev sequences scored by CE / the divergence
    share: float              # estimated validation cost / estimated training cost
    budget: Optional[float]   # train.val_budget (None: no limit)
    trimmed: bool             # fewer validations or dev items than the defaults, to stay within the budget

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.share > self.budget * (1 + 1e-9)

    def record(self) -> Dict[str, Any]:
        return {**asdict(self), "share": round(self.share, 4)}


def plan(costs: ValCosts, *, total_steps: int, steps_per_epoch: Optional[int], val_every: Optional[int],
         val_samples: Optional[int], val_examples: Optional[int], dev_prompts: int, dev_sequences: int,
         budget: Optional[float], need_rouge: bool = False) -> ValPlan:
    """The validation schedule. Settings given (not None) are kept; open ones take their defaults (once per
    epoch or 5 times, DEFAULT_SAMPLES prompts, every dev sequence) cut down until the estimate fits within
    `budget` x the training's cost: first the number of validations (to MIN_VALIDATIONS), then the dev items,
    prompts and sequences in proportion, the sequences then taking what the prompts leave. Fewer than
    MIN_SAMPLES prompts are none (no val_rougeL: the cheap dev CE and divergence remain), unless `need_rouge`
    (train.select=best_dev selects on it); never fewer than MIN_EXAMPLES sequences."""
    samples = min(dev_prompts, DEFAULT_SAMPLES if val_samples is None else int(val_samples))
    examples = dev_sequences if val_examples is None else min(dev_sequences, int(val_examples))
    steps = validation_steps(val_every, total_steps, steps_per_epoch)
    if not steps:
        return ValPlan([], 0, 0, 0.0, budget, False)

    def one(s: int, e: int) -> float:
        return s * costs.per_sample + e * costs.per_example

    full = (samples, examples)
    if budget is not None and len(steps) * one(samples, examples) > float(budget) * costs.train:
        allowed = float(budget) * costs.train
        if val_every is None:
            k = max(MIN_VALIDATIONS, math.floor(allowed / max(one(samples, examples), 1e-30)))
            if k < len(steps):
                steps = validation_steps(max(1, math.ceil(total_steps / (k - 1))), total_steps, None)
        per_validation = allowed / len(steps)
        if val_samples is None and one(samples, examples) > per_validation:
            fixed = 0.0 if val_examples is None else examples * costs.per_example
            free = samples * costs.per_sample + (examples * costs.per_example if val_examples is None else 0.0)
            cut = math.floor(samples * max(0.0, per_validation - fixed) / free) if free > 0 else samples
            samples = min(samples, cut if cut >= MIN_SAMPLES else (MIN_SAMPLES if need_rouge else 0))
        if val_examples is None and costs.per_example > 0 and one(samples, examples) > per_validation:
            room = math.floor((per_validation - samples * costs.per_sample) / costs.per_example)
            examples = min(examples, max(MIN_EXAMPLES, room))
    share = len(steps) * one(samples, examples) / costs.train if costs.train > 0 else math.inf
    trimmed = (samples, examples) != full or steps != validation_steps(val_every, total_steps, steps_per_epoch)
    return ValPlan(steps, samples, examples, share, budget, trimmed)


def describe(p: ValPlan, *, max_new_tokens: int) -> str:
    """One line: what the plan validates and what it is estimated to cost."""
    budget = "no budget" if p.budget is None else f"train.val_budget={p.budget:g}"
    gens = f"{p.samples} generations of up to {max_new_tokens} tokens" if p.samples else "no generations (no val_rougeL)"
    return (f"dev validation: {len(p.steps)} times, {gens} and {p.examples} dev sequences each: about "
            f"{100 * p.share:.1f} % of the training's estimated cost ({budget}"
            f"{', defaults cut to fit' if p.trimmed else ''})")
