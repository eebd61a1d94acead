"""`method.recipe_params`: the parameters of each data recipe (gkd, distillm, seqkd; offline and sft have
none), each typed once here with its default, meaning and valid values. Hydra composes a recipe's defaults
from here (conf/method/gkd.yaml: `defaults: [recipe_params: gkd]`); the checks (training.recipes.
check_recipe_params, run by experiment.config_check) and the recipes' constructors read the same entries.

A table of `Param`s rather than a dataclass per recipe: GKD's parameter is called `lambda`, a Python keyword no
dataclass field can take, and the values keep the type they are written with (`lambda=1` stays an int), so the
run directories named by a hash of the config stay where they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .ranges import Range


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    range: Optional[Range] = None        # a number within this interval
    integer: bool = False                # ... and a whole one
    choices: Optional[Tuple] = None      # one of these values
    optional: bool = False               # null is valid too (its meaning is in `help`)


ENGINES = (None, "native", "vllm")        # who samples a recipe's responses; None follows eval.engine
REPLAY_RATIOS = ("decreasing", "constant", "increasing")
VAL_LOSSES = ("kd", "ce")
VAL_REFERENCES = ("last_rise", "previous")

# The sampling options of every recipe that samples, with their defaults: docs/method.md section 6, pure
# sampling at T = 1.
SAMPLING: Dict[str, Param] = {
    "temperature": Param(1.0, "sampling temperature", Range(0.0)),
    "top_k": Param(0, "top-k filter (0: none)", Range(0), integer=True),
    # top_p=0 would keep no token
    "top_p": Param(1.0, "nucleus filter (1: none)", Range(0.0, 1.0, lo_open=True)),
    "max_new_tokens": Param(256, "new tokens per sample, as the released sampler (512 - 256); never past "
                                 "dataset.max_len. null: up to it", Range(1), integer=True, optional=True),
    "gen_batch_size": Param(None, "sampling batch; null: train.micro_batch", Range(1), integer=True,
                            optional=True),
    "engine": Param(None, 'who samples: null follows eval.engine; "native" (the project\'s sampler) or "vllm" '
                          "(docs/generation.md)", choices=ENGINES),
}
# The on-policy recipes' extra: the vLLM engine's copy of the student is refreshed every this many sampling calls
# (1: before every call, exactly on-policy; k > 1 samples from weights up to k - 1 calls old and a resumed run
# no longer draws the same samples as an uninterrupted one).
REFRESH: Dict[str, Param] = {
    "refresh_every": Param(1, "sampling calls between copies of the student into the vLLM engine", Range(1),
                           integer=True),
}

GKD: Dict[str, Param] = {
    "lambda": Param(0.5, "probability that a micro-batch is replaced by on-policy student samples",
                    Range(0.0, 1.0)),
    **SAMPLING,
    **REFRESH,
}

# The rule these drive: training.recipes.distillm.
DISTILLM: Dict[str, Param] = {
    "replay_capacity": Param(1000, "FIFO replay buffer of student-generated examples", Range(1), integer=True),
    "prob_init": Param(0.0, "probability of using student-generated outputs at the start", Range(0.0, 1.0)),
    "prob_step": Param(0.1, "... raised by this much (up to prob_max) when the validation loss rises",
                       Range(0.0, 1.0)),
    "prob_max": Param(1.0, "the probability's ceiling", Range(0.0, 1.0)),
    "val_loss_rise": Param(0.1, "a rise is at least this much over the reference", Range(0.0)),
    "val_reference": Param("last_rise", "last_rise (the released code) | previous (the previous evaluation)",
                           choices=VAL_REFERENCES),
    "val_loss": Param("ce", "ce: the student's CE, mean of per-batch means (released) | kd: the base divergence",
                      choices=VAL_LOSSES),
    "val_every": Param(None, "steps between validations; null: once per epoch (train.val_every is another "
                             "thing)", Range(1), integer=True, optional=True),
    "val_samples": Param(1000, "dev examples used (null: all)", Range(1), integer=True, optional=True),
    "replay_ratio": Param("decreasing", "share of p that samples fresh: decreasing (1 - step/total) | constant | "
                                        "increasing", choices=REPLAY_RATIOS),
    **SAMPLING,
    **REFRESH,
}

SEQKD: Dict[str, Param] = {
    "seed": Param(0, "sampling streams of the teacher's responses (part of the cache key)", Range(0),
                  integer=True),
    **SAMPLING,
    "gen_batch_size": Param(32, "teacher generation batch (generated once, before training)", Range(1),
                            integer=True, optional=True),
}

RECIPE_PARAMS: Dict[str, Dict[str, Param]] = {"offline": {}, "sft": {}, "gkd": GKD, "distillm": DISTILLM,
                                              "seqkd": SEQKD}


def defaults(recipe: str) -> Dict[str, Any]:
    """A recipe's parameters at their defaults."""
    return {k: p.default for k, p in RECIPE_PARAMS[recipe].items()}
