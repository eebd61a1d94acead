"""The generation engine of a job (eval.engine): None for the native sampler, else a vLLM engine on the
directory holding exactly the weights being evaluated.

vLLM loads checkpoints, not modules: a model that exists only in memory (a pruned or from-scratch untrained
student) is saved into the run directory first; a trained student already is (run_dir/model); a teacher or a
student loaded unchanged from a checkpoint is served from that checkpoint (a local directory or a hub id), so a
large teacher is never written twice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig

from ..evaluation.generation import max_positions
from ..evaluation.vllm_engine import INSTALL_HINT, VLLMEngine, eos_ids_of, vllm_available
from ..io import build_lock
from ..models import save_model
from ..training.recipes import ON_POLICY, RECIPE_DEFAULTS
from .identity import model_path
from .plan import JobPlan
from .teacher import Teacher

log = logging.getLogger(__name__)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def checkpoint_of(cfg: DictConfig, evaluates: str, model_info: Dict[str, Any],
                  saved: Optional[Path] = None) -> Optional[str]:
    """A checkpoint (directory or hub id) whose weights are the model's, or None. `saved`: where the runner saves
    a trained student (run_dir/model), taken first when it holds one."""
    if saved is not None and _is_checkpoint(saved):
        return str(saved)
    if evaluates == "teacher" and model_info.get("source") in ("shipped", "finetuned-cache"):
        return str(model_info["teacher"])
    spec = cfg.model.teacher if evaluates == "teacher" else cfg.model.student
    if spec.source == "pretrained" and spec.path and not spec.lora and not spec.get("finetune"):
        return model_path(spec.path)
    return None


def engine_model_dir(cfg: DictConfig, evaluates: str, model, tokenizer, model_info: Dict[str, Any],
                     run_dir: Path) -> str:
    found = checkpoint_of(cfg, evaluates, model_info, saved=run_dir / "model")
    if found is not None:
        return found
    out = run_dir / "model"
    log.info("saving the %s to %s for the vLLM engine", evaluates, out)
    save_model(model, tokenizer, out, extra={"run": run_dir.name, "saved_for": "vllm evaluation"})
    return str(out)


def max_model_len(model, ev) -> int:
    """Positions the engine needs: the longest cut prompt plus the generation budget, within the model's."""
    return _positions(model, int(ev.max_prompt_len) + int(ev.max_new_tokens))


def sampling_engine_errors(cfg: DictConfig) -> list[str]:
    """Config errors of a recipe sampling with vLLM (experiment.config_check): it must be installed, and the engine's
    copy of a student is refreshed from a plain module (no LoRA adapters, no FSDP shards)."""
    recipe = str(cfg.method.recipe)
    if "engine" not in RECIPE_DEFAULTS.get(recipe, {}):   # a recipe that does not sample
        return []
    engine = (cfg.method.get("recipe_params") or {}).get("engine") or cfg.eval.engine
    if engine != "vllm":
        return []
    errors = []
    if not vllm_available():
        errors.append(f"method.recipe={recipe} samples with vLLM: {INSTALL_HINT}")
    if recipe in ON_POLICY and (cfg.model.student.lora or cfg.train.fsdp):
        errors.append(f"method.recipe={recipe} with vLLM sampling refreshes the engine from the student's plain "
                      "weights: LoRA students and FSDP are not supported yet; set method.recipe_params.engine=native")
    return errors


def open_teacher_engine(cfg: DictConfig, plan: JobPlan, teacher: Teacher, tokenizer) -> VLLMEngine:
    """A vLLM engine on the frozen teacher (SeqKD's responses): its checkpoint where it was loaded unchanged,
    else a copy saved once per teacher (identity.teacher_key) in the cache."""
    info: Dict[str, Any] = teacher.info if (cfg.model.teacher.finetune or cfg.model.teacher_asset) else {}
    source = checkpoint_of(cfg, "teacher", info)
    if source is None:
        out = plan.caches.vllm_teacher
        if not _is_checkpoint(out):
            with build_lock(out, "vLLM copy of the teacher"):   # a shared cache: one writer at a time
                if not _is_checkpoint(out):
                    save_model(teacher.model, tokenizer, out, extra={"recipe_hash": plan.teacher_key,
                                                                     "saved_for": "vllm sampling"})
        source = str(out)
    return VLLMEngine(source, eos_ids=eos_ids_of(teacher.model, tokenizer), cfg=cfg.eval.vllm,
                      device=str(plan.device), max_model_len=_positions(teacher.model, int(cfg.dataset.max_len)),
                      seed=int(cfg.train.seed))


def open_policy_engine(cfg: DictConfig, student, tokenizer, run_dir: Path, device, max_len: int) -> VLLMEngine:
    """A vLLM engine shaped like the student (its architecture saved once into the run directory); the weights it
    samples with are copied in from the student before sampling (training.recipes.PolicyEngine)."""
    out = Path(run_dir) / "vllm-policy"
    if not _is_checkpoint(out):
        save_model(student, tokenizer, out, extra={"run": Path(run_dir).name, "saved_for": "vllm on-policy sampling"})
    return VLLMEngine(str(out), eos_ids=eos_ids_of(student, tokenizer), cfg=cfg.eval.vllm, device=str(device),
                      max_model_len=_positions(student, max_len), seed=int(cfg.train.seed))


def _positions(model, need: int) -> int:
    limit = max_positions(model)
    return need if limit is None else min(need, limit)


def open_eval_engine(cfg: DictConfig, plan: JobPlan, model, tokenizer,
                     model_info: Dict[str, Any]) -> Optional[VLLMEngine]:
    """The job's vLLM engine when eval.engine=vllm (None: the native sampler). The caller closes it."""
    if str(cfg.eval.engine) != "vllm":
        return None
    source = engine_model_dir(cfg, plan.evaluates, model, tokenizer, model_info, plan.run_dir)
    return VLLMEngine(source, eos_ids=eos_ids_of(model, tokenizer), cfg=cfg.eval.vllm, device=str(plan.device),
                      max_model_len=max_model_len(model, cfg.eval), seed=int(cfg.train.seed))
