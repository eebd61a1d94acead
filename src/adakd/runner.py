"""run(cfg) -> metrics: one experiment from config to results on disk.

Order matters for a researcher's time: validate the config and read the data first (bad input fails in
seconds, with the file and line), then build or load models, train, evaluate, and write results
atomically. A run's directory is a function of its resolved config, so the same command finds its own
directory again: a finished run is skipped, an unfinished one resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import runinfo
from .io import atomic_write_json, atomic_write_text, read_json
from .validate import validate_config

log = logging.getLogger(__name__)

# Keys that do not change a run's results: they are left out of the run-directory hash.
NON_SEMANTIC_KEYS = [
    "logger", "run.baselines", "run.progress", "run.print_table", "run.output_root",
    "eval.batch_size", "train.threads", "train.log_every", "train.ckpt_every", "train.keep_last",
    # where and how it runs, not what it computes (world size / FSDP: see docs/scale.md)
    "train.fsdp", "train.preflight", "train.preflight_margin", "model.teacher.device", "model.student.device",
]
ROW_LABELS = {"teacher": "teacher", "student_init": "student (untrained)", "sft": "student SFT"}


# ------------------------------------------------------------------------------------------ run identity
def semantic_config(cfg: DictConfig) -> Dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC_KEYS:
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    # Sections a stage does not use must not split its cache: the teacher row and the untrained-student
    # row are the same whatever method, AdaKD setting or training schedule the main run uses.
    stage = c.get("run", {}).get("stage")
    if stage in ("eval_teacher", "eval_init"):
        for section in ("method", "adakd", "train"):
            c.pop(section, None)
        if stage == "eval_teacher":
            c.get("model", {}).pop("student", None)
    elif c.get("method", {}).get("recipe") == "sft":
        c.pop("adakd", None)
    # The teacher cache off is the plain live-teacher run: same directory as before the setting existed.
    train = c.get("train") or {}
    if not (train.get("teacher_cache") or {}).get("enabled", False):
        train.pop("teacher_cache", None)
    return c


def adakd_label(cfg: DictConfig) -> str:
    return {(True, True): "adakd", (True, False): "latf", (False, True): "idts", (False, False): "plain"}[
        (bool(cfg.adakd.latf), bool(cfg.adakd.idts))]


def run_name(cfg: DictConfig) -> str:
    if cfg.run.name:
        return str(cfg.run.name)
    if cfg.run.stage == "eval_teacher":
        return f"teacher-{cfg.model.name}"
    if cfg.run.stage == "eval_init":
        return f"student-init-{cfg.model.name}"
    if cfg.method.recipe == "sft":
        return f"sft-{cfg.model.name}"
    return f"{cfg.method.name}-{adakd_label(cfg)}-{cfg.model.name}"


def run_dir_for(cfg: DictConfig) -> Path:
    h = runinfo.config_hash(semantic_config(cfg))
    return Path(cfg.run.output_root).absolute() / "runs" / f"{run_name(cfg)}-{h}"


def is_finished(run_dir: Path) -> bool:
    m = run_dir / "metrics.json"
    if not m.exists():
        return False
    try:
        return read_json(m).get("status") == "ok"
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ the run
def run(cfg: DictConfig, ctx: Optional["Context"] = None) -> Dict[str, Any]:
    from . import distributed
    if distributed.env_world().enabled and not distributed.is_initialized():
        # Launched by torchrun: join the process group for this run (and its baselines), leave it after.
        validate_config(cfg)
        distributed.init_from_env(str(cfg.train.device))
        try:
            return run(cfg, ctx)
        finally:
            distributed.teardown()
    validate_config(cfg)
    ctx = ctx or Context()
    run_dir = run_dir_for(cfg)
    baselines = {}
    if cfg.run.stage == "train" and cfg.run.baselines:
        baselines = {b: _baseline(cfg, b, ctx) for b in cfg.run.baselines}
    # Under torchrun rank 0 decides (a rank must not skip a run whose collectives the others enter).
    if distributed.broadcast_object(is_finished(run_dir)):
        log.info("finished run found, skipping: %s", run_dir)
        metrics = read_json(run_dir / "metrics.json")
    else:
        metrics = _execute(cfg, run_dir, ctx)
    if baselines:
        metrics["baselines"] = baselines
        if distributed.info().is_main:
            atomic_write_json(run_dir / "metrics.json", metrics)
    if not distributed.info().is_main:   # rank 0 reports
        return metrics
    if cfg.run.print_table:
        from .report import results_table
        print(results_table(metrics, label=_row_label(cfg)), flush=True)
    print(f"metrics: {run_dir / 'metrics.json'}", flush=True)
    return metrics


def _row_label(cfg: DictConfig) -> str:
    if cfg.run.stage != "train":
        return run_name(cfg)
    if cfg.method.recipe == "sft":
        return "student SFT"
    return f"student {cfg.method.name}" + ("" if adakd_label(cfg) == "plain" else f" + {adakd_label(cfg)}")


def _baseline(cfg: DictConfig, which: str, ctx: "Context") -> Dict[str, Any]:
    """A cached reference row (teacher, untrained student, SFT student) computed by its own run."""
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
        raise ValueError(f"unknown baseline {which!r}; valid: {sorted(ROW_LABELS)}")
    log.info("baseline row %r", which)
    m = run(sub, ctx)
    return {"label": ROW_LABELS[which], "rougeL": m["rougeL"], "avg": m["avg"], "dir": m["run"]["dir"]}


def _execute(cfg: DictConfig, run_dir: Path, ctx: "Context") -> Dict[str, Any]:
    from .pipeline import build_benchmarks, get_student, get_teacher, get_tokenizer, pick_device

    from . import distributed
    dist = distributed.info()
    t_start = time.time()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        runinfo.write_run_info(run_dir, cfg)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    device = dist.device if dist.enabled else pick_device(cfg.train.device)
    from .train import seed_everything
    seed_everything(int(cfg.train.seed))

    # Data first: malformed files fail here, before any model is built.
    data = ctx.data(cfg)
    benchmarks, data_files = build_benchmarks(cfg, data)
    tokenizer = get_tokenizer(cfg, data, ctx)
    if cfg.train.preflight:   # memory needed vs the device's, from the model configs alone: before any weights
        from .preflight import check_run
        check_run(cfg, tokenizer, device, world_size=dist.world_size)
    if dist.enabled:
        # A teacher still to be fine-tuned is trained by all ranks together (and cached), before any stage
        # that runs on rank 0 alone needs it.
        from .pipeline import ensure_teacher
        ensure_teacher(cfg, tokenizer, data, ctx, device)
        if not dist.is_main and cfg.run.stage != "train":
            distributed.barrier()   # evaluation-only stages run on rank 0; wait for its results
            return read_json(run_dir / "metrics.json")

    from .tracking import make_logger, NullLogger
    logger = make_logger(cfg.logger, run_dir, run_id=run_dir.name, name=run_dir.name,
                         config=OmegaConf.to_container(cfg, resolve=True)) if dist.is_main else NullLogger()
    exit_code = 1
    try:
        stage = cfg.run.stage
        train_summary: Dict[str, Any] = {}
        if stage == "eval_teacher":
            model, model_info = get_teacher(cfg, tokenizer, data, ctx, device)
        else:
            model, model_info = get_student(cfg, tokenizer, ctx, device)
            if stage == "train":
                train_summary, model = _train(cfg, run_dir, model, tokenizer, data, ctx, device, logger)
        if not dist.is_main:   # only rank 0 evaluates and writes results
            exit_code = 0
            distributed.barrier()
            return read_json(run_dir / "metrics.json")
        t_eval = time.time()
        from .evaluate import evaluate_model
        results = evaluate_model(model, tokenizer, benchmarks, cfg.eval, run_dir, device=str(device),
                                 model_info=model_info, data_files=data_files, progress=cfg.run.progress)
        eval_seconds = time.time() - t_eval
        metrics = {
            "status": "ok",
            "rougeL": results["rougeL"],
            "avg": results["avg"],
            "protocol": results.get("protocol", {}),
            "run": {"name": run_name(cfg), "dir": str(run_dir), "stage": stage, "method": cfg.method.name,
                    "adakd": adakd_label(cfg), "eval_seconds": round(eval_seconds, 2),
                    "total_seconds": round(time.time() - t_start, 2), **train_summary},
        }
        atomic_write_json(run_dir / "metrics.json", metrics)
        _log_results(logger, metrics, run_dir)
        exit_code = 0
        distributed.barrier()
        return metrics
    finally:
        logger.finish(exit_code=exit_code)


def _train(cfg, run_dir, student, tokenizer, data, ctx, device, logger) -> Dict[str, Any]:
    from .pipeline import build_trainer

    trainer, teacher = build_trainer(cfg, run_dir, student, tokenizer, data, ctx, device, logger)
    result = trainer.train()
    from .models import save_model
    from .pipeline import export_student
    # FSDP shards gathered (rank 0 gets the model, the others None), LoRA adapters merged.
    student = export_student(cfg, trainer, student, tokenizer, ctx, device)
    if student is not None:
        save_model(student, tokenizer, run_dir / "model",
                   extra={"run": run_dir.name, "steps": result.steps, "method": cfg.method.name})
    return {"steps": result.steps, "final_loss": result.final_loss, "train_seconds": round(result.seconds, 2),
            "resumed_from": result.resumed_from, "skipped_steps": result.skipped_steps,
            "tokens_trained": trainer.tokens_seen if hasattr(trainer, "tokens_seen") else None,
            "world_size": trainer.world_size}, student


def _log_results(logger, metrics: Dict[str, Any], run_dir: Path) -> None:
    rows = [[b, v["mean"], v["std"], v["n"]] for b, v in metrics["rougeL"].items()]
    logger.log_table("results/rougeL", ["benchmark", "mean", "std", "n"], rows)
    logger.summary({"rougeL/avg": metrics["avg"], **{f"rougeL/{b}": v["mean"] for b, v in metrics["rougeL"].items()}})
    samples = []
    pred_dir = run_dir / "predictions"
    if pred_dir.exists():
        import json
        for f in sorted(pred_dir.glob("*.jsonl")):
            with open(f) as fh:
                for i, line in enumerate(fh):
                    if i >= 20:
                        break
                    r = json.loads(line)
                    samples.append([f.stem, r.get("seed"), r.get("prompt", "")[-300:], r.get("prediction", ""),
                                    (r.get("references") or [""])[0], r.get("rougeL")])
    if samples:
        logger.log_table("results/samples", ["benchmark", "seed", "prompt", "prediction", "reference", "rougeL"],
                         samples)
    try:
        from .plots import plot_run
        for name, path in plot_run(run_dir).items():
            logger.log_image(f"plots/{name}", path)
    except Exception as e:   # a plot must never cost a run its results
        log.warning("plotting failed: %s", e)


class Context:
    """What a process builds once and reuses across the runs of a sweep (data, tokenizer, teacher)."""

    def __init__(self):
        self._cache: Dict[str, Any] = {}

    def get(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def data(self, cfg: DictConfig):
        from .pipeline import build_train_data
        key = "data:" + runinfo.config_hash(OmegaConf.to_container(cfg.dataset, resolve=True))
        return self.get(key, lambda: build_train_data(cfg))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
