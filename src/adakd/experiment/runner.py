"""run(cfg) -> metrics: one command from config to results on disk.

Read as a checklist: validate the config; expand it into jobs (its baseline rows, then itself:
experiment.tasks); for each job, skip it if its run directory holds a finished result, else execute it:
resolve it once (assemble.plan), read the data (bad input fails in seconds, with the file and line), build the
tokenizer, check the memory, build the model to evaluate (teacher, untrained student, or a student trained by
SFT or distillation; the teacher loaded once), evaluate it, write run_info.json and metrics.json, once each.
Then print the command's table.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .. import runinfo
from ..assemble.context import Context
from ..assemble.data import build_benchmarks, encoded_train, run_data, usable_dev
from ..assemble.devices import pick_device
from ..assemble.engine import open_eval_engine
from ..assemble.preflight import check_lengths, check_run
from ..assemble.student import export_student, get_student
from ..assemble.plan import JobPlan
from ..assemble.teacher import Teacher, ensure_teacher, get_teacher
from ..assemble.tokenizer import get_tokenizer
from ..assemble.trainer import build_trainer
from ..evaluation.evaluate import evaluate_model, prompt_token_lengths
from ..data.benchmarks import file_sha256_cached
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, hold_directory, read_json
from ..models import save_model
from ..tracking import NullLogger, make_logger
from ..training import distributed
from ..training.recipes import recipe_params
from ..training.schedule import seed_everything
from .plots import plot_run
from .table_render import results_table
from .tasks import BASELINE_LABELS, Job, adakd_label, is_finished, plan_jobs, run_dir_for, task_of
from .config_check import validate_config

log = logging.getLogger(__name__)

__all__ = ["Context", "is_finished", "run", "run_dir_for", "task_of"]


def run(cfg: DictConfig, ctx: Optional[Context] = None) -> Dict[str, Any]:
    """Run a command (its baseline rows, then itself); returns the main run's metrics."""
    validate_config(cfg)
    if distributed.env_world().enabled and not distributed.is_initialized():
        # Launched by torchrun: join the process group for this command (and its baselines), leave it after.
        distributed.init_from_env(str(cfg.train.device))
        try:
            return run(cfg, ctx)
        finally:
            distributed.teardown()
    ctx = ctx or Context()
    *baselines, main = plan_jobs(cfg)
    rows = {}
    for job in baselines:
        log.info("baseline row %r", job.baseline)
        validate_config(job.cfg)
        m = run_job(job, ctx)
        rows[job.baseline] = {"label": BASELINE_LABELS[job.baseline], "rougeL": m["rougeL"], "avg": m["avg"],
                              "dir": m["run"]["dir"]}
    metrics = run_job(main, ctx, baselines=rows)
    if not distributed.info().is_main:   # rank 0 reports
        return metrics
    if cfg.run.print_table:
        print(results_table(metrics, label=main.task.label(cfg)), flush=True)
    print(f"metrics: {main.run_dir / 'metrics.json'}", flush=True)
    return metrics


def run_job(job: Job, ctx: Context, baselines: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A finished run is read back; an unfinished one is executed (resuming its last checkpoint). The run
    directory is held by this process meanwhile (rank 0 under torchrun): a second process refuses at once.
    `baselines`: the rows of the command's baseline jobs, recorded in the main job's metrics.json."""
    if not distributed.info().is_main:
        return _run_or_reuse(job, ctx, baselines or {})
    with hold_directory(job.run_dir):
        return _run_or_reuse(job, ctx, baselines or {})


def _run_or_reuse(job: Job, ctx: Context, baselines: Dict[str, Any]) -> Dict[str, Any]:
    reuse = False
    if distributed.info().is_main and is_finished(job.run_dir):
        metrics = read_json(job.run_dir / "metrics.json")
        check_thread_count(job, metrics.get("run", {}).get("cpu_threads"))
        changed = changed_benchmark_files(metrics)
        if changed:
            log.warning("benchmark file(s) changed since %s was evaluated: %s; evaluating again", job.run_dir,
                        ", ".join(changed))
        reuse = not changed
    # Under torchrun rank 0 decides (a rank must not skip a run whose collectives the others enter).
    if distributed.broadcast_object(reuse):
        log.info("finished run found, skipping: %s", job.run_dir)
        metrics = read_json(job.run_dir / "metrics.json")
        if baselines and metrics.get("baselines") != baselines:
            # the same run under another run.baselines (not part of its identity): the rows it is shown with now
            metrics["baselines"] = baselines
            if distributed.info().is_main:
                write_metrics(job.run_dir, metrics)
        return metrics
    return execute(job, ctx, baselines)


def cpu_threads(train: DictConfig) -> Optional[int]:
    """The torch CPU thread count a job runs with (None on CUDA, where the count does not change results)."""
    if str(train.device).startswith("cuda") or (train.device == "auto" and torch.cuda.is_available()):
        return None
    return int(train.threads) if train.threads else torch.get_num_threads()


def check_thread_count(job: Job, recorded: Optional[int]) -> None:
    """On a CPU the thread count changes the order of float reductions, hence the trained weights and the
    samples: a run computed with one count is not reused (or resumed) with another."""
    now = cpu_threads(job.cfg.train)
    if recorded is not None and now is not None and int(recorded) != now:
        raise ConfigError(f"{job.run_dir} was computed with {recorded} CPU thread(s) and this process would use "
                          f"{now}: results depend on the thread count, so it is not reused. Pass "
                          f"train.threads={recorded} to use it, or another run.output_root to compute it again")


def changed_benchmark_files(metrics: Dict[str, Any]) -> list:
    """The benchmark files whose content differs from what a finished run recorded (missing ones count)."""
    changed = []
    for bench, files in (metrics.get("protocol", {}).get("data_files") or {}).items():
        for f in files if isinstance(files, list) else []:
            path = Path(f.get("path", ""))
            if not path.is_file() or file_sha256_cached(path) != f.get("sha256"):
                changed.append(f"{bench} ({path})")
    return changed


def write_metrics(run_dir: Path, metrics: Dict[str, Any]) -> None:
    """metrics.json, a run's result: written once, when the run is finished (its presence marks it finished),
    or again only to record new baseline rows beside a reused result."""
    atomic_write_json(run_dir / "metrics.json", metrics)


def execute(job: Job, ctx: Context, baselines: Dict[str, Any]) -> Dict[str, Any]:
    cfg = job.cfg
    dist = distributed.info()
    t_start = time.time()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    # run_info.json: what the run is computed with, taken now, and what it cost; written once, beside metrics.json
    run_info = runinfo.provenance()
    plan = job.plan(dist.device if dist.enabled else pick_device(cfg.train.device), cpu_threads(cfg.train))
    run_dir, device = plan.run_dir, plan.device
    seed_everything(int(cfg.train.seed))
    data, benchmarks, data_files, tokenizer = checked_inputs(cfg, plan, ctx, dist.world_size)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if dist.enabled:
        # A teacher still to be fine-tuned is trained by all ranks together (and cached), before any task
        # that runs on rank 0 alone needs it.
        if plan.uses_teacher:
            ensure_teacher(cfg, tokenizer, data, ctx, device, plan.teacher_key)
        if not dist.is_main and not plan.trains:
            distributed.barrier()   # evaluation-only tasks run on rank 0; wait for its results
            return read_json(run_dir / "metrics.json")

    logger = make_logger(cfg.logger, run_dir, run_id=run_dir.name, name=run_dir.name,
                         config=OmegaConf.to_container(cfg, resolve=True)) if dist.is_main else NullLogger()
    exit_code = 1
    try:
        model, model_info, train_summary = model_to_evaluate(cfg, plan, tokenizer, data, ctx, logger, run_info)
        if not dist.is_main:   # only rank 0 evaluates and writes results
            exit_code = 0
            distributed.barrier()
            return read_json(run_dir / "metrics.json")
        results, eval_seconds = evaluate_job(cfg, plan, model, tokenizer, model_info, benchmarks, data_files)
        if "engine" in results:   # start-up apart from generation, tokens/s
            run_info["eval_engine"] = results["engine"]
        metrics = {
            "status": "ok",
            "rougeL": results["rougeL"],
            "avg": results["avg"],
            "protocol": results.get("protocol", {}),
            "run": {"name": plan.name, "dir": str(run_dir), "task": job.task.name, "stage": cfg.run.stage,
                    "method": cfg.method.name, "adakd": adakd_label(cfg.adakd), "cpu_threads": plan.cpu_threads,
                    "eval_seconds": round(eval_seconds, 2),
                    **({"eval_engine": results["engine"]} if "engine" in results else {}),
                    "total_seconds": round(time.time() - t_start, 2), **train_summary},
            **({"baselines": baselines} if baselines else {}),
        }
        atomic_write_json(run_dir / "run_info.json", run_info)
        write_metrics(run_dir, metrics)
        log_results(logger, metrics, run_dir)
        exit_code = 0
        distributed.barrier()
        return metrics
    finally:
        logger.finish(exit_code=exit_code)


def checked_inputs(cfg: DictConfig, plan: JobPlan, ctx: Context, world_size: int):
    """The job's data, benchmarks (with their files' digests) and tokenizer, and every check that needs no weights:
    malformed data (fails here with the file and line), sequences longer than the models' positions, memory.
    Nothing of the run is written before they pass."""
    data = run_data(cfg.dataset, ctx)
    benchmarks, data_files = build_benchmarks(cfg, data)
    tokenizer = get_tokenizer(cfg, data, ctx, roles=plan.roles, teacher_key=plan.teacher_key)
    does = {"trains": plan.trains, "distils": plan.distils, "evaluates_teacher": plan.evaluates_teacher}
    # every sequence of the run vs the positions of the models that see it, from their configs alone
    trains_a_model = plan.trains or (plan.uses_teacher and bool(cfg.model.teacher.finetune))
    train_lengths = ([len(e["input_ids"]) for e in encoded_train(cfg.dataset, tokenizer, data, ctx)]
                     if trains_a_model else [])
    if plan.trains:
        usable_dev(cfg, tokenizer, data, ctx)   # dev validation needs a dev example within the limits
    check_lengths(cfg, tokenizer, train_lengths, prompt_token_lengths(tokenizer, benchmarks, cfg.eval), **does)
    if cfg.train.preflight:   # memory needed vs the device's, from the model configs alone: before any weights
        check_run(cfg, tokenizer, plan.device, world_size=world_size, **does)
    return data, benchmarks, data_files, tokenizer


def model_to_evaluate(cfg: DictConfig, plan: JobPlan, tokenizer, data, ctx: Context, logger,
                      run_info: Dict[str, Any]):
    """The job's model: the teacher, an untrained student, or a student trained here (SFT or distillation; its
    training costs go into run_info). The teacher is loaded (or fine-tuned) where the job first needs it, once.
    Returns (model, model_info, the training's summary for metrics.json)."""
    device = plan.device

    def load_teacher() -> Teacher:
        return Teacher(*get_teacher(cfg, tokenizer, data, ctx, device, plan.teacher_key))

    if plan.evaluates_teacher:
        teacher = load_teacher()
        return teacher.model, teacher.info, {}
    # a pruned student is cut from the teacher; else the teacher loads after the student is built (a LoRA
    # student's adapters draw their initial weights from the global generator the fine-tune moves)
    teacher = load_teacher() if cfg.model.student.source == "pruned" else None
    model, model_info = get_student(cfg.model.student, tokenizer, device,
                                    teacher=teacher.model if teacher is not None else None,
                                    for_training=plan.trains, sharded=bool(cfg.train.fsdp) and distributed.info().enabled)
    train_summary: Dict[str, Any] = {}
    if plan.trains:
        if plan.distils and teacher is None:
            teacher = load_teacher()
        train_summary, model, train_costs = train(cfg, plan, model, teacher, tokenizer, data, ctx, logger)
        run_info.update(train_costs)
    return model, model_info, train_summary


def evaluate_job(cfg: DictConfig, plan: JobPlan, model, tokenizer, model_info, benchmarks, data_files):
    """The protocol's evaluation of the job's model by the engine eval.engine names (closed after it, whatever
    happens). Returns (results, its wall-clock seconds)."""
    t_eval = time.time()
    engine = open_eval_engine(cfg, plan, model, tokenizer, model_info)
    try:
        results = evaluate_model(model, tokenizer, benchmarks, cfg.eval, plan.run_dir, device=str(plan.device),
                                 model_info=model_info, data_files=data_files, progress=cfg.run.progress,
                                 engine=engine)
    finally:
        if engine is not None:
            engine.close()
    return results, time.time() - t_eval


def train(cfg: DictConfig, plan: JobPlan, student, teacher: Optional[Teacher], tokenizer, data, ctx: Context,
          logger):
    """Train the job's student (SFT, or distillation from `teacher`), save it; returns (summary for metrics.json,
    the trained model, what the training cost beside its results for run_info.json)."""
    run_dir = plan.run_dir
    trainer, val_plan = build_trainer(cfg, plan, student, tokenizer, data, ctx, logger,
                                      teacher=teacher if plan.distils else None)
    try:
        result = trainer.train()
    finally:   # a vLLM engine sampling the student frees its memory before evaluation starts its own
        source = trainer.batch_source
        student_engine = getattr(trainer.validator, "engine", None)   # dev validation's (maybe the recipe's too)
        sampling_engine = source.engine_record() if source is not None else {}
        if not sampling_engine and student_engine is not None:
            sampling_engine = student_engine.stats()
        if source is not None:
            source.close()
        if student_engine is not None:
            student_engine.close()
    selected = {"select": str(cfg.train.select), "step": result.steps}
    if cfg.train.select == "best_dev":   # the best dev ROUGE-L's weights are the ones evaluated and exported
        best = trainer.load_best()
        if best is None:
            log.warning("train.select=best_dev but no validation scored ROUGE-L: the last student is used")
        selected.update(step=best if best is not None else result.steps, dev_rougeL=result.best_rougeL)
    # FSDP shards gathered (rank 0 gets the model, the others None), LoRA adapters merged.
    student = export_student(cfg.model.student, trainer, student, tokenizer, plan.device,
                             teacher=teacher.model if teacher is not None else None)
    if student is not None:
        save_model(student, tokenizer, run_dir / "model",
                   extra={"run": run_dir.name, "steps": result.steps, "method": cfg.method.name,
                          "selected": selected})
    # what the run cost beside its provenance: the dev validation plan and its seconds, a sampling engine's
    # start-up and refreshes
    costs = {**({"dev_validation_plan": val_plan.record()} if val_plan.steps else {}),
             "dev_eval_seconds": result.val_seconds,
             **({"sampling_engine": sampling_engine} if sampling_engine else {})}
    # the resolved objective and recipe parameters (the configs hold only what differs from the defaults)
    return {"steps": result.steps, "final_loss": result.final_loss, "train_seconds": round(result.seconds, 2),
            "dev_eval_seconds": result.val_seconds, "selected": selected,
            "best_dev": {"step": result.best_step, "val_rougeL": result.best_rougeL},
            "resumed_from": result.resumed_from, "skipped_steps": result.skipped_steps,
            "world_size": trainer.world_size, "objective": repr(trainer.objective) if trainer.objective else None,
            "recipe_params": recipe_params(cfg.method.recipe, cfg.method.get("recipe_params")),
            **({"sampling_engine": sampling_engine} if sampling_engine else {})}, student, costs


def log_results(logger, metrics: Dict[str, Any], run_dir: Path) -> None:
    """Mirror the results to the logger (W&B): scalars, the ROUGE-L table, sample generations, the plots."""
    rows = [[b, v["mean"], v["std"], v["n"]] for b, v in metrics["rougeL"].items()]
    logger.log_table("results/rougeL", ["benchmark", "mean", "std", "n"], rows)
    logger.summary({"rougeL/avg": metrics["avg"], **{f"rougeL/{b}": v["mean"] for b, v in metrics["rougeL"].items()}})
    samples = []
    pred_dir = run_dir / "predictions"
    if pred_dir.exists():
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
        for name, path in plot_run(run_dir).items():
            logger.log_image(f"plots/{name}", path)
    except Exception as e:   # noqa: BLE001 - a plot must never cost a run its results
        log.warning("plotting failed: %s", e)
