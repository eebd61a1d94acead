"""What one run does -- its task -- and the jobs a command expands into, before anything runs.

Four tasks:
    distil        train the student from the teacher with the method (KD), then evaluate it
    sft           train the student on the dataset's responses alone (method=sft), then evaluate it
    eval_teacher  evaluate the teacher (no training)
    eval_init     evaluate the untrained student (no training)

The config chooses the task once (`task_of`: run.stage, and method.recipe=sft for SFT), and everything
downstream asks the task, not the strings. A `train` command with run.baselines expands into the jobs of its
baseline rows (teacher, untrained student, SFT student), each a run of its own with its own cached result,
followed by the main job (`plan_jobs`).

A run's identity (assemble.identity) leaves out the config sections its task does not use: the teacher row is
the same run whatever method or AdaKD setting trains the student, the SFT row whatever AdaKD setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..assemble.identity import run_dir
from ..assemble.plan import JobPlan, plan_job
from ..io import read_json

STAGES = ("train", "eval_teacher", "eval_init")     # run.stage
BASELINES = ("teacher", "student_init", "sft")       # run.baselines


@dataclass(frozen=True)
class Task:
    name: str
    trains: bool                 # a student is trained before it is evaluated
    distils: bool                # ... from the teacher (else by cross-entropy on the responses)
    evaluates: str               # "teacher" or "student"
    unused: Tuple[str, ...]      # dotted config keys the task ignores (not part of its run identity)

    @property
    def roles(self) -> Tuple[str, ...]:
        """The models of the pair this task loads (their tokenizers must be the run's)."""
        if self.evaluates == "teacher":
            return ("teacher",)
        return ("teacher", "student") if self.distils else ("student",)

    def uses_teacher(self, student) -> bool:
        """Whether the teacher model is needed (to distil from, to evaluate, or to prune the `student` spec
        from)."""
        return self.distils or self.evaluates == "teacher" or student.source == "pruned"

    def run_name(self, cfg: DictConfig) -> str:
        if cfg.run.name:
            return str(cfg.run.name)
        if self is EVAL_TEACHER:
            return f"teacher-{cfg.model.name}"
        if self is EVAL_INIT:
            return f"student-init-{cfg.model.name}"
        if self is SFT:
            return f"sft-{cfg.model.name}"
        return f"{cfg.method.name}-{adakd_label(cfg.adakd)}-{cfg.model.name}"

    def label(self, cfg: DictConfig) -> str:
        """The row label in a run's printed table."""
        if self is SFT:
            return "student SFT"
        if self is DISTIL:
            tag = adakd_label(cfg.adakd)
            return f"student {cfg.method.name}" + ("" if tag == "plain" else f" + {tag}")
        return self.run_name(cfg)

    def run_dir(self, cfg: DictConfig) -> Path:
        return run_dir(cfg, self.run_name(cfg), self.unused)


DISTIL = Task("distil", trains=True, distils=True, evaluates="student", unused=())
SFT = Task("sft", trains=True, distils=False, evaluates="student", unused=("adakd",))
EVAL_TEACHER = Task("eval_teacher", trains=False, distils=False, evaluates="teacher",
                    unused=("method", "adakd", "train", "model.student"))
EVAL_INIT = Task("eval_init", trains=False, distils=False, evaluates="student", unused=("method", "adakd", "train"))

BASELINE_LABELS = {"teacher": "teacher", "student_init": "student (untrained)", "sft": "student SFT"}


def task_of(cfg: DictConfig) -> Task:
    stage = cfg.run.stage
    if stage == "eval_teacher":
        return EVAL_TEACHER
    if stage == "eval_init":
        return EVAL_INIT
    if stage != "train":
        raise ValueError(f"run.stage={stage!r} is not valid; choose one of {list(STAGES)}")
    return SFT if cfg.method.recipe == "sft" else DISTIL


def adakd_label(adakd: DictConfig) -> str:
    """What of AdaKD the adakd section turns on, as run names and tables call it."""
    return {(True, True): "adakd", (True, False): "latf", (False, True): "idts", (False, False): "plain"}[
        (bool(adakd.latf), bool(adakd.idts))]


@dataclass
class Job:
    """One run: its task, its config, and (for a baseline row) which baseline it is."""
    task: Task
    cfg: DictConfig
    baseline: str = ""

    @cached_property
    def run_dir(self) -> Path:
        return self.task.run_dir(self.cfg)

    def plan(self, device: torch.device, cpu_threads: Optional[int]) -> JobPlan:
        """The job resolved once for its build functions (assemble.plan), on the device it runs on."""
        t, cfg = self.task, self.cfg
        return plan_job(cfg, name=t.run_name(cfg), run_dir=self.run_dir, trains=t.trains, distils=t.distils,
                        evaluates=t.evaluates, roles=t.roles, uses_teacher=t.uses_teacher(cfg.model.student), device=device,
                        cpu_threads=cpu_threads)


def run_dir_for(cfg: DictConfig) -> Path:
    return task_of(cfg).run_dir(cfg)


def is_finished(path: Path) -> bool:
    m = path / "metrics.json"
    if not m.exists():
        return False
    try:
        metrics = read_json(m)
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("status") == "ok"   # valid JSON but not ours: unfinished


def baseline_config(cfg: DictConfig, which: str) -> DictConfig:
    """The config of a baseline row: the main run's, turned into its task."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    sub.run.baselines = []
    sub.run.print_table = False
    sub.run.name = None
    if which == "teacher":
        sub.run.stage = "eval_teacher"
    elif which == "student_init":
        sub.run.stage = "eval_init"
    elif which == "sft":
        sub.method = OmegaConf.merge(sub.method, {"name": "sft", "divergence": "none", "recipe": "sft",
                                                  "kd_ratio": 0.0, "params": {}, "recipe_params": {}})
        # merging {} keeps the method's own keys (jsd's beta, gkd's lambda): clear them, so every method's
        # SFT row is the same run and the sft recipe gets no foreign recipe_params
        sub.method.params = {}
        sub.method.recipe_params = {}
        sub.adakd.latf = False
        sub.adakd.idts = False
    else:
        raise ValueError(f"unknown baseline {which!r}; valid: {list(BASELINES)}")
    return sub


def plan_jobs(cfg: DictConfig) -> List[Job]:
    """The jobs of a command: its baseline rows (a training run's run.baselines), then the run itself."""
    task = task_of(cfg)
    jobs = []
    if task.trains:
        for which in cfg.run.baselines:
            sub = baseline_config(cfg, which)
            jobs.append(Job(task_of(sub), sub, baseline=which))
    return jobs + [Job(task, cfg)]
