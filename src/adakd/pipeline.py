"""Building blocks of a run: data, tokenizer, teacher (loaded, shipped or fine-tuned and cached), student,
and the trainer wired to the objective. `runner.run` calls these in order.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from . import runinfo
from .models import (count_params, load_pretrained, load_tokenizer,
                     model_from_arch, save_model, train_bpe_tokenizer, verify_checksum)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    train: List[Any]            # Example
    dev: List[Any]
    test: List[Any]             # synthetic test split (empty for file-based datasets)
    files: Dict[str, Any]       # provenance of the training files


def build_train_data(cfg: DictConfig) -> RunData:
    ds = cfg.dataset
    if ds.name == "synthetic":
        from .data import synthetic
        tasks = list(ds.tasks) if ds.tasks else None
        return RunData(train=synthetic.generate("train", ds.n_train, ds.seed, tasks),
                       dev=synthetic.generate("dev", ds.n_dev, ds.seed, tasks),
                       test=synthetic.generate("test", ds.n_test, ds.seed, tasks),
                       files={"synthetic": {"n_train": ds.n_train, "seed": ds.seed, "tasks": tasks}})
    from .data import load_benchmark
    from .data.benchmarks import source_files
    train = load_benchmark(ds.name, ds.root, split=ds.train_split)
    try:
        dev = load_benchmark(ds.name, ds.root, split="dev")
    except (KeyError, ValueError):   # no dev file: hold out the last val_size training samples
        train, dev = train[:-ds.val_size], train[-ds.val_size:]
    if ds.max_train_samples:
        train = train[: ds.max_train_samples]
    return RunData(train=train, dev=dev, test=[], files={"train": source_files(train), "dev": source_files(dev)})


def build_benchmarks(cfg: DictConfig, data: RunData):
    """The evaluation sets named in eval.benchmarks, each cut to eval.max_samples (first N)."""
    out, files = {}, {}
    for name in cfg.eval.benchmarks:
        if name == "synthetic":
            if cfg.dataset.name != "synthetic":
                raise ValueError("eval.benchmarks has 'synthetic' but dataset is not synthetic")
            exs = data.test
            files[name] = {"generator": "adakd.data.synthetic", "n_test": len(exs), "seed": cfg.dataset.seed}
        else:
            from .data import load_benchmark
            from .data.benchmarks import source_files
            exs = load_benchmark(name, cfg.dataset.root)
            files[name] = source_files(exs)
        if cfg.eval.max_samples:
            exs = exs[: cfg.eval.max_samples]
        out[name] = exs
    return out, files


def encode_train(examples, tokenizer, ds) -> List[dict]:
    from .data import encode_example
    encoded, dropped = [], 0
    for ex in examples:
        prompt = ex.prompt
        if ds.chat_template:
            from .data.prompts import apply_chat_template
            prompt = apply_chat_template(tokenizer, prompt)
        e = encode_example(tokenizer, prompt, ex.references[0], max_prompt_len=ds.max_prompt_len,
                           max_len=ds.max_len, overlong=ds.overlong, add_special_tokens=not ds.chat_template)
        if e is None:
            dropped += 1
        else:
            encoded.append(e)
    if dropped:
        log.info("dropped %d of %d training samples over the length limits (dataset.overlong=%s)",
                 dropped, len(examples), ds.overlong)
    if not encoded:
        raise ValueError("no training sample fits the length limits (dataset.max_prompt_len / max_len)")
    return encoded


# -------------------------------------------------------------------------------------------- tokenizer
def _asset_dir(spec: Optional[str]) -> Optional[Path]:
    if not spec:
        return None
    if spec.startswith("builtin:"):
        return Path(str(resources.files("adakd") / "assets" / spec[len("builtin:"):]))
    return Path(spec)


def teacher_recipe_hash(cfg: DictConfig) -> str:
    """Identity of the teacher a run needs: architecture/source, tokenizer, training data and recipe."""
    ds = cfg.dataset
    data_key = {k: ds[k] for k in ("name", "train_split", "n_train", "seed", "tasks", "max_prompt_len",
                                   "max_len", "overlong", "chat_template", "max_train_samples")}
    teacher = OmegaConf.to_container(cfg.model.teacher, resolve=True)
    teacher.pop("device", None)   # where it runs is not what it is
    return runinfo.config_hash({
        "teacher": teacher,
        "tokenizer": cfg.model.tokenizer, "vocab": cfg.model.tokenizer_vocab, "data": data_key,
    })


def shipped_teacher(cfg: DictConfig) -> Optional[Path]:
    """The shipped checkpoint, when it was built by exactly this teacher recipe."""
    d = _asset_dir(cfg.model.teacher_asset)
    if d is None or not (d / "adakd_model.json").exists():
        return None
    import json
    info = json.loads((d / "adakd_model.json").read_text())
    if info.get("recipe_hash") != teacher_recipe_hash(cfg):
        log.info("shipped teacher %s was built by another recipe; a teacher will be trained and cached", d)
        return None
    return d


def teacher_cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.run.output_root).absolute() / "cache" / "teacher" / teacher_recipe_hash(cfg)


def get_tokenizer(cfg: DictConfig, data: RunData, ctx):
    m = cfg.model
    if m.tokenizer != "synthetic":
        path = m.tokenizer if m.tokenizer not in ("", "teacher") else m.teacher.path
        tok = ctx.get(f"tok:{path}", lambda: load_tokenizer(path, m.teacher.trust_remote_code))
        check_pair_tokenizers(cfg, tok, path, ctx)
        return tok
    asset = shipped_teacher(cfg)
    if asset is not None:
        return ctx.get(f"tok:{asset}", lambda: load_tokenizer(str(asset)))
    from .data import synthetic
    key = runinfo.config_hash({"vocab": m.tokenizer_vocab, "n_train": cfg.dataset.n_train,
                               "seed": cfg.dataset.seed, "tasks": cfg.dataset.tasks})
    out = Path(cfg.run.output_root).absolute() / "cache" / "tokenizer" / key

    def build():
        if (out / "tokenizer.json").exists():
            return load_tokenizer(str(out))
        return train_bpe_tokenizer(synthetic.corpus(data.train), m.tokenizer_vocab, out)
    return ctx.get(f"tok:{out}", build)


def check_pair_tokenizers(cfg: DictConfig, tokenizer, tokenizer_path: str, ctx) -> None:
    """Token-level KD needs one vocabulary: a pretrained teacher or student whose own tokenizer differs
    from the run's is refused here, before any model is loaded (tokenizers load in a second)."""
    from .models import check_same_tokenizer
    if cfg.run.stage == "eval_teacher":
        roles = ["teacher"]
    elif cfg.run.stage == "eval_init" or cfg.method.recipe == "sft":
        roles = ["student"]
    else:
        roles = ["teacher", "student"]
    for role in roles:
        spec = cfg.model[role]
        if spec.source != "pretrained" or not spec.path or str(spec.path) == str(tokenizer_path):
            continue
        own = ctx.get(f"tok:{spec.path}", lambda s=spec: load_tokenizer(str(s.path), s.trust_remote_code))
        try:
            check_same_tokenizer(tokenizer, own)
        except ValueError as e:
            raise type(e)(f"model.{role}.path={spec.path}: its tokenizer is not the run's tokenizer "
                          f"({tokenizer_path}): {e}") from None


# ---------------------------------------------------------------------------------------------- models
def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={spec} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(spec)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "fp32" or device.type != "cuda":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            log.warning("train.precision=%s ignored on %s: fp32 is used", precision, device.type)
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_dtype(name: str, device: Optional[torch.device]) -> str:
    """The weights dtype to load: the config's on CUDA; float32 on CPU (half precision is slow there and
    the CPU path is fp32 throughout)."""
    if device is not None and device.type != "cuda" and name in ("bfloat16", "float16"):
        log.info("%s weights requested; loading float32 on %s", name, device.type)
        return "float32"
    return name


def _build(spec, tokenizer, *, teacher=None, device: Optional[torch.device] = None) -> torch.nn.Module:
    if spec.source == "scratch":
        if not spec.arch:
            raise ValueError("model source=scratch needs an `arch` (n_layer, n_embd, n_head, n_positions)")
        return model_from_arch(OmegaConf.to_container(spec.arch, resolve=True), len(tokenizer),
                               spec.init_seed, tokenizer.eos_token_id)
    if spec.source == "pretrained":
        if not spec.path:
            raise ValueError("model source=pretrained needs `path` (a hub id or a local directory)")
        if Path(spec.path, "adakd_model.json").is_file():   # written by adakd (prepare, a run): verify
            verify_checksum(Path(spec.path))
        return load_pretrained(spec.path, dtype=load_dtype(spec.dtype, device),
                               trust_remote_code=spec.trust_remote_code)
    if spec.source == "pruned":
        if teacher is None:
            raise ValueError("student source=pruned needs a teacher to prune")
        from .pruning import prune_layers
        # The copy starts in the teacher's dtype (maybe bf16 on GPU); the student trains in its own dtype.
        return prune_layers(teacher, keep_layers=spec.keep_layers, every_k=spec.every_k).to(
            getattr(torch, load_dtype(spec.dtype, device)))
    raise ValueError(f"unknown model source {spec.source!r}; valid: ['scratch', 'pretrained', 'pruned']")


def get_teacher(cfg: DictConfig, tokenizer, data: RunData, ctx, device) -> Tuple[torch.nn.Module, Dict]:
    spec = cfg.model.teacher
    key = teacher_recipe_hash(cfg)

    def build():
        asset = shipped_teacher(cfg)
        if asset is not None:
            verify_checksum(asset)
            return load_pretrained(str(asset)), {"teacher": str(asset), "source": "shipped", "recipe": key}
        if spec.finetune:
            cache = teacher_cache_dir(cfg)
            if not (cache / "adakd_model.json").exists():
                _finetune_teacher(cfg, tokenizer, data, ctx, device, cache)
            verify_checksum(cache)
            return load_pretrained(str(cache)), {"teacher": str(cache), "source": "finetuned-cache", "recipe": key}
        model = _build(spec, tokenizer, device=tdev)
        return model, {"teacher": spec.path or "scratch", "source": spec.source, "recipe": key}

    if spec.lora and not spec.finetune:
        log.warning("model.teacher.lora applies to the teacher's fine-tuning (model.teacher.finetune), which is "
                    "not set: the teacher is used as loaded")
    # Half precision on GPU (model.teacher.dtype), fp32 on CPU; optionally on its own device.
    tdev = teacher_device(cfg, device)
    model, info = ctx.get(f"teacher:{key}", build)
    model.to(device=tdev, dtype=getattr(torch, load_dtype(spec.dtype, tdev))).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = dict(info, params=count_params(model))
    return model, info


def ensure_teacher(cfg: DictConfig, tokenizer, data: RunData, ctx, device) -> None:
    """Fine-tune and cache the teacher now if this run needs it and it is not cached (all ranks together)."""
    needs = (cfg.run.stage == "eval_teacher" or cfg.model.student.source == "pruned"
             or (cfg.run.stage == "train" and cfg.method.recipe != "sft"))
    if not needs or not cfg.model.teacher.finetune or shipped_teacher(cfg) is not None:
        return
    cache = teacher_cache_dir(cfg)
    if not (cache / "adakd_model.json").exists():
        _finetune_teacher(cfg, tokenizer, data, ctx, device, cache)


def _finetune_teacher(cfg, tokenizer, data: RunData, ctx, device, out: Path) -> None:
    """Supervised fine-tuning of the teacher on the training set; its own run directory keeps checkpoints,
    so a killed fine-tune resumes; the result is cached by recipe and reused by every later run."""
    from .schema import TrainConfig
    from .train import Trainer, seed_everything
    from .tracking import NullLogger
    from .data import collate_train

    # Only the recipe in model.teacher.finetune (on top of the defaults) shapes the teacher, so the cache key
    # (teacher_recipe_hash) is complete; where it runs is taken from the current train section.
    ft = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                         {"device": cfg.train.device, "threads": cfg.train.threads}, cfg.model.teacher.finetune)
    from .distributed import barrier, info as dist_info
    spec = cfg.model.teacher
    d = dist_info()
    # Trained in float32 (autocast gives bf16/fp16 compute on GPU); model.teacher.dtype applies when it is used.
    model = _build(OmegaConf.merge(spec, {"dtype": "float32"}) if not spec.lora else spec, tokenizer, device=device)
    if spec.gradient_checkpointing:
        _enable_checkpointing(model)
    if spec.lora:   # LoRA fine-tuning of a large teacher (base in model.teacher.dtype), merged before caching
        from .lora import apply_lora
        model = apply_lora(model, OmegaConf.to_container(spec.lora, resolve=True))
    train_model = model
    if cfg.train.fsdp and d.enabled:
        from .distributed import wrap_fsdp
        train_model = wrap_fsdp(model, param_dtype=autocast_dtype(ft.precision, device), device=device)
    else:
        model.to(device)
        if d.enabled:
            from .distributed import broadcast_params
            broadcast_params(model)
    work = out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(int(ft.seed))
    encoded = ctx.get(f"enc:{id(tokenizer)}:{id(data)}", lambda: encode_train(data.train, tokenizer, cfg.dataset))
    total = _total_steps(ft, len(encoded))
    method = OmegaConf.create({"name": "teacher-sft", "divergence": "none", "recipe": "sft", "kd_ratio": 0.0})
    log.info("fine-tuning the teacher (%d steps, cached in %s)", total, out)
    trainer = Trainer(student=train_model, teacher=None, train_data=encoded,
                      collate=lambda b: collate_train(b, tokenizer.pad_token_id), objective=None,
                      method_cfg=method, train_cfg=ft, run_dir=work, logger=NullLogger(), device=device,
                      total_steps=total, progress=cfg.run.progress,
                      autocast_dtype=autocast_dtype(ft.precision, device), world_size=d.world_size, rank=d.rank)
    result = trainer.train()
    model = _plain_model(trainer, model, lambda: _build(spec, tokenizer, device=torch.device("cpu")), spec)
    if d.is_main:
        save_model(model, tokenizer, out, extra={"recipe_hash": teacher_recipe_hash(cfg), "steps": result.steps,
                                                 "final_loss": result.final_loss,
                                                 "recipe": OmegaConf.to_container(cfg.model.teacher, resolve=True)})
        import shutil
        shutil.copy(work / "train_log.jsonl", out / "train_log.jsonl")
    barrier()   # the other ranks load the cached teacher rank 0 has just written


def get_student(cfg: DictConfig, tokenizer, ctx, device) -> Tuple[torch.nn.Module, Dict]:
    spec = cfg.model.student
    teacher = None
    if spec.source == "pruned":
        teacher, _ = get_teacher(cfg, tokenizer, ctx.data(cfg), ctx, device)
    model = _build(spec, tokenizer, teacher=teacher, device=device)
    if spec.gradient_checkpointing:
        _enable_checkpointing(model)
    if spec.lora:
        from .lora import apply_lora
        model = apply_lora(model, OmegaConf.to_container(spec.lora, resolve=True))
    if not (cfg.train.fsdp and _dist().enabled and cfg.run.stage == "train"):
        model.to(device)   # with FSDP the shards are moved to the device when the model is wrapped
    info = {"student": spec.path or spec.source, "params": count_params(model)}
    if spec.source == "pruned":
        info["pruned_from"] = getattr(model.config, "adakd_pruned_from", None)
    return model, info


def teacher_device(cfg: DictConfig, device: torch.device) -> torch.device:
    spec = cfg.model.teacher.device
    if not spec:
        return device
    return pick_device(str(spec))


def _dist():
    from .distributed import info
    return info()


def _enable_checkpointing(model) -> None:
    """Recompute each block's activations in backward; non-reentrant, so frozen (LoRA) bases work too."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _plain_model(trainer, model, rebuild, spec):
    """The trained weights as an ordinary transformers model: FSDP shards gathered (rank 0 gets the model,
    the others None), LoRA adapters merged."""
    if getattr(trainer, "fsdp", False):
        from .distributed import full_state_dict, info
        state = full_state_dict(trainer.student)   # a collective; on CPU, rank 0 only
        if not info().is_main:
            return None
        model = rebuild()
        if spec.gradient_checkpointing:
            _enable_checkpointing(model)
        if spec.lora:
            from .lora import apply_lora
            model = apply_lora(model, OmegaConf.to_container(spec.lora, resolve=True))
        prefix = "lm."   # the ResponseLM root (adakd.distributed.wrap_fsdp)
        model.load_state_dict({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()})
    from .lora import merged
    return merged(model)


def export_student(cfg: DictConfig, trainer, student, tokenizer, ctx, device):
    """The trained student for saving and evaluation (None on ranks other than 0 under FSDP)."""
    spec = cfg.model.student

    def rebuild():
        teacher = None
        if spec.source == "pruned":
            teacher, _ = get_teacher(cfg, tokenizer, ctx.data(cfg), ctx, device)
        return _build(spec, tokenizer, teacher=teacher, device=device)
    model = _plain_model(trainer, student, rebuild, spec)
    if model is not None:
        model.to(device)
    return model


def _total_steps(train_cfg, n_examples: int) -> int:
    if train_cfg.steps:
        return int(train_cfg.steps)
    return max(1, math.ceil(float(train_cfg.epochs) * n_examples / int(train_cfg.global_batch)))


def build_trainer(cfg: DictConfig, run_dir: Path, student, tokenizer, data: RunData, ctx, device, logger):
    from .data import collate_train
    from .train import Trainer

    encoded = ctx.get(f"enc:{id(tokenizer)}:{id(data)}", lambda: encode_train(data.train, tokenizer, cfg.dataset))
    total = _total_steps(cfg.train, len(encoded))
    teacher, objective = None, None
    if cfg.method.recipe != "sft":
        teacher, _ = get_teacher(cfg, tokenizer, data, ctx, device)
        from .objective import build_objective
        objective = build_objective(cfg.method, cfg.adakd, total_steps=total, impl=cfg.train.loss_impl,
                                    chunk_size=cfg.train.loss_chunk_size, seed=int(cfg.train.seed))
    d = _dist()
    amp = autocast_dtype(cfg.train.precision, device)
    from .models import lm_parts
    student_vocab = int(lm_parts(student)[1].weight.shape[0])   # before any FSDP wrapping
    if cfg.train.fsdp and d.enabled:
        from .distributed import wrap_fsdp
        if objective is not None and list(objective.parameters()):
            raise ValueError("train.fsdp=true with a learnable objective parameter (adakd.temperature=ctkd) "
                             "is not supported; use plain data parallel (train.fsdp=false)")
        student = wrap_fsdp(student, param_dtype=amp, device=device)
    elif cfg.train.fsdp:
        log.warning("train.fsdp=true ignored: one process (launch with torchrun for FSDP; docs/scale.md)")
    elif d.enabled:
        from .distributed import broadcast_params
        broadcast_params(student)   # every replica starts from rank 0's weights, as DDP does
    batch_source = None
    if cfg.method.recipe not in ("offline", "sft"):
        from .recipes import build_recipe
        batch_source = build_recipe(cfg, student=student, teacher=teacher, tokenizer=tokenizer, data=data,
                                    ctx=ctx, device=device, run_dir=run_dir)
        if hasattr(batch_source, "train_data"):   # seqkd: the teacher's (cached) responses replace the dataset's
            encoded = batch_source.train_data(encoded)
    trainer_cls, extra = Trainer, {}
    if teacher is not None and cfg.train.teacher_cache.enabled:   # off-policy: the teacher's top-k from disk
        from .teacher_cache import CachedTeacherTrainer, load_or_build
        cache = load_or_build(cfg, teacher, encoded, student_vocab=student_vocab, pad_id=tokenizer.pad_token_id,
                              device=device, autocast_dtype=amp)
        trainer_cls, extra = CachedTeacherTrainer, {"cache": cache, "tail": str(cfg.train.teacher_cache.tail),
                                                    "form": str(cfg.train.teacher_cache.form)}
    trainer = trainer_cls(
        student=student, teacher=teacher, train_data=encoded,
        collate=lambda b: collate_train(b, tokenizer.pad_token_id), objective=objective,
        method_cfg=cfg.method, train_cfg=cfg.train, run_dir=run_dir, logger=logger, device=device,
        total_steps=total, progress=cfg.run.progress, batch_source=batch_source,
        telemetry_every=int(cfg.adakd.telemetry_every) if objective is not None else 0,
        autocast_dtype=amp, world_size=d.world_size, rank=d.rank,
        on_step_end=getattr(batch_source, "on_step_end", None), **extra,
    )
    return trainer, teacher
