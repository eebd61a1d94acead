"""`run` section: what a command runs and where its results go."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunSection:
    # train: train the student with `method` (sft or distillation), then evaluate it.
    # eval_teacher / eval_init: evaluate the teacher / the untrained student, no training.
    stage: str = "train"
    # Extra rows computed (and cached) around a `train` run: teacher, student_init, sft.
    baselines: List[str] = field(default_factory=list)
    name: Optional[str] = None       # run-name prefix; default <method>-<adakd>
    output_root: str = "outputs"
    progress: bool = True
    print_table: bool = True
