"""Pre-flight memory check: will this pair, batch and length fit, before a single weight is loaded?

Everything is computed from the model configs (transformers' AutoConfig for hub ids and local directories,
the `arch` dict for models built from scratch), the run's settings and the free memory of the device
(CUDA: `torch.cuda.mem_get_info`; CPU: MemAvailable of /proc/meminfo). Components, per device:

* weights        parameters x bytes of their dtype (teacher and student)
* gradients      trainable parameters x bytes of the student's dtype
* optimizer      AdamW: two float32 states per trainable parameter (8 bytes)
  (weights, gradients and optimizer of the student are divided by the world size under FSDP)
* activations    layers x micro batch x sequence x hidden x a factor (ACT_FACTOR bytes per element at 16 bit,
                 twice that at 32 bit); with gradient checkpointing only each block's input is kept, plus
                 one block's activations during its recomputation; the teacher (no grad) one block at a time
* logits         response tokens x vocabulary x bytes x roles (student logits, their gradient, teacher
                 logits) and the objective's float32 work (the whole [N, V] rows, or one chunk with
                 loss_impl=chunked/fused); response tokens = micro batch x (max_len - max_prompt_len)
* logit_cache    loss_impl=fused with a teacher: the pass-1 logit cache of the hardest tokens, the most it can
                 hold (its budget, train.fused_logit_cache_mb or derived from the loss's memory floor, and at
                 most two rows per response token). Counted for every fused KD run: telemetry steps score
                 tokens (and so fill the cache) even where LATF and IDTS are off.
* overhead       CUDA context / allocator slack, or the Python process on CPU

It is an estimate (about +-25 %: allocator fragmentation, attention kernels, temporary copies), meant to
catch the runs that cannot fit -- a refusal names the settings that would make it fit -- and to warn near
the limit (`train.preflight_margin`). `train.preflight=false` skips it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from transformers import AutoConfig

from ..errors import ConfigError, UserError
from ..kd.objective.logit_cache import auto_budget_bytes
from ..models.pruning import layers_to_keep
from .devices import autocast_dtype, load_dtype, teacher_device
from .identity import model_path

log = logging.getLogger(__name__)

GiB = 1024 ** 3
ACT_FACTOR = 34          # bytes per (token x hidden x layer) of a transformer block at 16 bit (Korthikanti et al.)
OBJECTIVE_TEMPS = 6      # float32 [rows, V] temporaries of a divergence's forward + backward
OVERHEAD = {"cuda": 1.0 * GiB, "cpu": 1.0 * GiB}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class PreflightError(UserError, RuntimeError):
    """The run will not fit; the message names what would make it fit."""


# --------------------------------------------------------------------------------------------- shapes
@dataclass
class ModelShape:
    n_params: int
    n_layers: int
    hidden: int
    vocab: int
    intermediate: int
    kv_dim: int                  # width of K (= of V) per layer: n_kv_heads x head_dim
    q_dim: int                   # width of Q: n_heads x head_dim
    tied: bool = True
    kind: str = "llama"          # gpt2 | llama
    attn_bias: bool = False
    extra_params: int = 0        # non-block parameters (embeddings, positions, norms, head)
    positions: Optional[int] = None   # the longest sequence the model takes (GPT-2 n_positions, ...)

    @property
    def per_layer(self) -> int:
        return (self.n_params - self.extra_params) // max(1, self.n_layers)

    def pruned(self, n_layers: int) -> "ModelShape":
        return dataclasses.replace(self, n_layers=n_layers, n_params=self.extra_params + self.per_layer * n_layers)


def _gpt2_shape(vocab: int, n_layer: int, n_embd: int, n_inner: Optional[int], n_positions: int) -> ModelShape:
    h, i = n_embd, n_inner or 4 * n_embd
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h) + 4 * h   # attn, proj, mlp, 2 LN
    extra = vocab * h + n_positions * h + 2 * h                                        # wte, wpe, ln_f (head tied)
    return ModelShape(n_params=extra + n_layer * per_layer, n_layers=n_layer, hidden=h, vocab=vocab,
                      intermediate=i, kv_dim=h, q_dim=h, tied=True, kind="gpt2", attn_bias=True, extra_params=extra,
                      positions=n_positions)


def shape_from_config(c: Any) -> ModelShape:
    """A ModelShape from a transformers config (GPT-2 or any Llama-style decoder: Llama, Qwen2, Mistral...)."""
    get = (lambda k, d=None: c.get(k, d)) if isinstance(c, Mapping) else (lambda k, d=None: getattr(c, k, d))
    if get("model_type") == "gpt2" or get("n_embd") is not None:
        return _gpt2_shape(int(get("vocab_size")), int(get("n_layer")), int(get("n_embd")), get("n_inner"),
                           int(get("n_positions", 1024)))
    h, n_layers, vocab = int(get("hidden_size")), int(get("num_hidden_layers")), int(get("vocab_size"))
    n_heads = int(get("num_attention_heads"))
    head_dim = int(get("head_dim") or h // n_heads)
    kv_heads = int(get("num_key_value_heads") or n_heads)
    inter = int(get("intermediate_size") or 4 * h)
    q_dim, kv_dim = n_heads * head_dim, kv_heads * head_dim
    bias = bool(get("attention_bias", False)) or get("model_type") == "qwen2"   # Qwen2: q/k/v biases
    attn = h * q_dim + 2 * h * kv_dim + q_dim * h + ((q_dim + 2 * kv_dim) if bias else 0)
    mlp = 3 * h * inter + ((2 * inter + h) if get("mlp_bias", False) else 0)
    per_layer = attn + mlp + 2 * h
    tied = bool(get("tie_word_embeddings", False))
    extra = vocab * h + h + (0 if tied else vocab * h)
    return ModelShape(n_params=extra + n_layers * per_layer, n_layers=n_layers, hidden=h, vocab=vocab,
                      positions=get("max_position_embeddings"),
                      intermediate=inter, kv_dim=kv_dim, q_dim=q_dim, tied=tied, kind="llama", attn_bias=bias,
                      extra_params=extra)


def lora_params(shape: ModelShape, r: int, targets: Optional[List[str]] = None) -> int:
    """Trainable parameters of LoRA adapters of rank r (peft's default targets when none are given)."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    if shape.kind == "gpt2":
        dims = {"c_attn": (h, 3 * h), "c_proj": (h, h), "c_fc": (h, i)}
        targets = targets or ["c_attn"]
    else:
        dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        targets = targets or ["q_proj", "v_proj"]
        if targets == "all-linear" or targets == ["all-linear"]:
            targets = list(dims)
    per_layer = sum(r * (dims[t][0] + dims[t][1]) for t in targets if t in dims)
    return per_layer * shape.n_layers


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Role:
    shape: ModelShape
    dtype_bytes: int = 4
    device: str = "cpu"
    trainable: bool = False
    lora_r: int = 0
    lora_targets: Optional[List[str]] = None
    checkpointing: bool = False

    def trainable_params(self) -> int:
        if not self.trainable:
            return 0
        return lora_params(self.shape, self.lora_r, self.lora_targets) if self.lora_r else self.shape.n_params


@dataclass
class Plan:
    stage: str                         # train | eval
    student: Optional[Role]
    teacher: Optional[Role]            # None: SFT (or evaluation of the student only)
    micro_batch: int = 8
    global_batch: int = 8
    max_len: int = 512
    max_prompt_len: int = 256
    amp_bytes: int = 4                 # 2 under bf16/fp16 autocast
    loss_impl: str = "chunked"
    chunk: int = 1024
    world_size: int = 1
    fsdp: bool = False
    eval_batch: int = 16
    max_new_tokens: int = 256
    logit_cache_mb: Optional[float] = None   # train.fused_logit_cache_mb (None: derived from the memory floor)
    notes: List[str] = field(default_factory=list)
    resident: List[Role] = field(default_factory=list)   # loaded and kept, not run (e.g. the teacher of a pruned student)

    @property
    def response_tokens(self) -> int:
        return self.micro_batch * max(1, self.max_len - self.max_prompt_len)


def _activations(shape: ModelShape, tokens: int, act_bytes: int, checkpointing: bool) -> float:
    per_layer = tokens * shape.hidden * ACT_FACTOR * act_bytes / 2
    if checkpointing:   # block inputs kept, one block recomputed at a time
        return shape.n_layers * tokens * shape.hidden * act_bytes + per_layer
    return shape.n_layers * per_layer


def logit_cache_bytes(plan: Plan) -> float:
    """The most the fused path's logit cache (kd.objective.logit_cache) takes: its budget, within two rows (student
    and teacher, in the hidden states' dtype, as the LM-head matmuls return them) per response token."""
    n, v, row_bytes = plan.response_tokens, plan.student.shape.vocab, plan.amp_bytes
    if plan.logit_cache_mb is not None:
        budget = float(plan.logit_cache_mb) * 2 ** 20
    else:
        budget = auto_budget_bytes(n, v, plan.student.shape.hidden, plan.chunk, grad_bytes=max(4, plan.student.dtype_bytes),
                                   hidden_bytes=row_bytes, compute_bytes=4, with_weight_grad=row_bytes != 4)
    return min(budget, n * v * 2 * row_bytes)


def estimate(plan: Plan) -> Dict[str, Dict[str, float]]:
    """Bytes per device and component."""
    out: Dict[str, Dict[str, float]] = {}

    def add(dev: str, what: str, n: float) -> None:
        out.setdefault(dev, {})
        out[dev][what] = out[dev].get(what, 0.0) + float(n)

    if plan.stage != "train":   # evaluation: weights, KV cache, logits of one decoding step
        role = plan.teacher if plan.student is None else plan.student
        s = role.shape
        seq = plan.max_prompt_len + plan.max_new_tokens
        add(role.device, "weights", s.n_params * role.dtype_bytes)
        add(role.device, "kv_cache", plan.eval_batch * seq * s.n_layers * 2 * s.kv_dim * role.dtype_bytes)
        add(role.device, "logits", plan.eval_batch * s.vocab * 4 * 3)
        add(role.device, "activations", plan.eval_batch * seq * s.hidden * role.dtype_bytes * 4)
    else:
        st = plan.student
        shard = plan.world_size if plan.fsdp else 1
        trainable = st.trainable_params()
        tokens = plan.micro_batch * plan.max_len
        act_bytes = min(plan.amp_bytes, st.dtype_bytes)
        add(st.device, "weights", st.shape.n_params * st.dtype_bytes / shard)
        if plan.fsdp and shard > 1:   # one block gathered at a time (two with prefetch)
            add(st.device, "weights", 2 * st.shape.per_layer * st.dtype_bytes)
        add(st.device, "gradients", trainable * st.dtype_bytes / shard)
        add(st.device, "optimizer", trainable * 8 / shard)
        add(st.device, "activations", _activations(st.shape, tokens, act_bytes, st.checkpointing))
        n, v = plan.response_tokens, st.shape.vocab
        lb = plan.amp_bytes
        if plan.teacher is None:   # SFT: logits, their gradient, the float32 copy for the CE
            if plan.loss_impl == "fused":
                add(st.device, "logits", plan.chunk * v * 4 * 3)
            else:
                add(st.device, "logits", n * v * (2 * lb + 2 * 4))
        else:
            t = plan.teacher
            add(t.device, "weights", t.shape.n_params * t.dtype_bytes)
            add(t.device, "activations", tokens * t.shape.hidden * ACT_FACTOR * min(plan.amp_bytes, t.dtype_bytes) / 2
                + tokens * t.shape.hidden * t.dtype_bytes)
            if plan.loss_impl == "fused":
                add(st.device, "logits", plan.chunk * v * 4 * OBJECTIVE_TEMPS)
                add(st.device, "logit_cache", logit_cache_bytes(plan))
            else:
                rows = n if plan.loss_impl == "reference" else min(n, plan.chunk)
                add(st.device, "logits", n * v * lb * 2 + rows * v * 4 * OBJECTIVE_TEMPS)   # student + its grad
                add(t.device, "logits", n * t.shape.vocab * lb)                           # teacher
    for r in plan.resident:
        add(r.device, "weights", r.shape.n_params * r.dtype_bytes)
    for dev in out:
        add(dev, "overhead", OVERHEAD["cuda" if dev.startswith("cuda") else "cpu"])
    return out


def total(est: Mapping[str, Mapping[str, float]], dev: Optional[str] = None) -> float:
    return sum(sum(c.values()) for d, c in est.items() if dev is None or d == dev)


# ------------------------------------------------------------------------------------------- devices
def free_bytes(device: str) -> Optional[int]:
    """Free memory of a device: CUDA mem_get_info, or MemAvailable on CPU (None when unknown)."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        idx = torch.device(device).index
        free, _ = torch.cuda.mem_get_info(idx if idx is not None else torch.cuda.current_device())
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------- check
@dataclass
class Report:
    need: Dict[str, float]
    free: Dict[str, Optional[int]]
    breakdown: Dict[str, Dict[str, float]]
    ok: bool
    warn: bool
    suggestions: List[str]
    message: str


def _fmt(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _fits(plan: Plan, free: Mapping[str, Optional[int]], frac: float = 1.0) -> bool:
    est = estimate(plan)
    return all(free.get(d) is None or total(est, d) <= frac * free[d] for d in est)


def suggestions(plan: Plan, free: Mapping[str, Optional[int]], cuda_devices: int = 0) -> List[str]:
    """Settings that make the plan fit, each tried alone (the smallest change first), else all together."""
    if plan.stage != "train":
        out = []
        if plan.eval_batch > 1:
            out.append(f"eval.batch_size={max(1, plan.eval_batch // 4)}")
        return out
    st = plan.student
    cands: List[Tuple[str, Plan]] = []
    mb = plan.micro_batch
    while mb > 1:
        mb //= 2
        if plan.global_batch % (mb * plan.world_size) == 0:
            cands.append((f"train.micro_batch={mb} (gradient accumulation keeps train.global_batch="
                          f"{plan.global_batch})", dataclasses.replace(plan, micro_batch=mb)))
    if not st.checkpointing:
        cands.append(("model.student.gradient_checkpointing=true",
                      dataclasses.replace(plan, student=dataclasses.replace(st, checkpointing=True))))
    if plan.loss_impl != "fused" and plan.teacher is not None:
        cands.append(("train.loss_impl=fused (no [tokens, vocab] logits)", dataclasses.replace(plan, loss_impl="fused")))
    t = plan.teacher
    if t is not None and t.dtype_bytes == 4 and t.device.startswith("cuda"):
        cands.append(("model.teacher.dtype=bfloat16",
                      dataclasses.replace(plan, teacher=dataclasses.replace(t, dtype_bytes=2))))
    if not st.lora_r:
        cands.append(("model.student.lora={r:16,alpha:32,dropout:0.05} (LoRA: adapters train, the base is frozen)",
                      dataclasses.replace(plan, student=dataclasses.replace(st, lora_r=16))))
    if not plan.fsdp:
        if plan.world_size > 1:
            cands.append((f"train.fsdp=true (student weights, gradients and optimizer split over {plan.world_size} "
                          "processes)", dataclasses.replace(plan, fsdp=True)))
        else:
            for k in (2, 4, 8):
                if plan.global_batch % (plan.micro_batch * k) == 0:
                    cands.append((f"train.fsdp=true under torchrun --nproc_per_node={k} (student states split "
                                  f"over {k} GPUs; docs/scale.md)", dataclasses.replace(plan, fsdp=True, world_size=k)))
    if t is not None and cuda_devices > 1 and t.device == st.device:
        other = "cuda:1" if st.device in ("cuda", "cuda:0") else "cuda:0"
        cands.append((f"model.teacher.device={other} (the teacher on its own GPU)",
                      dataclasses.replace(plan, teacher=dataclasses.replace(t, device=other))))
    fitting = []
    for text, p in cands:
        if _fits(p, free):
            fitting.append((total(estimate(p)), text))
    if fitting:
        seen, out = set(), []
        for need, text in sorted(fitting, key=lambda x: -x[0]):   # the gentlest change that fits first
            key = text.split("=")[0]
            if key in seen:
                continue
            seen.add(key)
            out.append(f"{text} -> about {_fmt(need)}")
        return out
    # Nothing alone: all of them together.
    p = plan
    for _, q in cands:
        p = dataclasses.replace(p, micro_batch=min(p.micro_batch, q.micro_batch), loss_impl=q.loss_impl if
                                q.loss_impl == "fused" else p.loss_impl, fsdp=p.fsdp or q.fsdp,
                                world_size=max(p.world_size, q.world_size),
                                student=dataclasses.replace(p.student, checkpointing=p.student.checkpointing or
                                                            q.student.checkpointing,
                                                            lora_r=p.student.lora_r or q.student.lora_r))
    if _fits(p, free):
        return [f"all together: {'; '.join(t for t, _ in cands)} -> about {_fmt(total(estimate(p)))}"]
    return ["nothing tried fits: a smaller pair, a larger device, or shorter sequences (dataset.max_len)"]


def check(plan: Plan, free: Optional[Mapping[str, Optional[int]]] = None, margin: float = 0.9,
          cuda_devices: Optional[int] = None) -> Report:
    est = estimate(plan)
    free = dict(free) if free is not None else {d: free_bytes(d) for d in est}
    need = {d: total(est, d) for d in est}
    over = [d for d in est if free.get(d) is not None and need[d] > free[d]]
    near = [d for d in est if free.get(d) is not None and margin * free[d] < need[d] <= free[d]]
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lines = []
    for d, comps in est.items():
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in comps.items() if v >= 0.05 * GiB)
        have = "unknown" if free.get(d) is None else _fmt(free[d])
        lines.append(f"{d}: needs about {_fmt(need[d])} ({parts}); free {have}")
    sugg = suggestions(plan, free, cuda_devices) if (over or near) else []
    head = ("pre-flight: this run does not fit" if over else
            "pre-flight: this run is close to the memory limit" if near else "pre-flight: fits")
    msg = head + "\n  " + "\n  ".join(lines + plan.notes)
    if sugg:
        msg += "\n  what would make it fit:\n    - " + "\n    - ".join(sugg)
    if over:
        msg += "\n  (train.preflight=false runs it anyway; the estimate is rough, +-25 %)"
    return Report(need=need, free=free, breakdown=est, ok=not over, warn=bool(near), suggestions=sugg, message=msg)


# ----------------------------------------------------------------------------------------- from config
def _load_config(path: str, trust_remote_code: bool):
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def spec_shape(spec, vocab: int, teacher_shape: Optional[ModelShape] = None) -> ModelShape:
    """Shape of a model spec (model.teacher / model.student) without loading weights."""
    if spec.source == "scratch":
        arch = dict(spec.arch)
        arch.pop("type", None)
        return _gpt2_shape(vocab, int(arch.get("n_layer", 12)), int(arch.get("n_embd", 768)), arch.get("n_inner"),
                           int(arch.get("n_positions", 1024)))
    if spec.source == "pretrained":
        return shape_from_config(_load_config(model_path(spec.path), bool(spec.trust_remote_code)))
    if spec.source == "pruned":
        if teacher_shape is None:
            raise ValueError("a pruned student needs the teacher's shape")
        keep = layers_to_keep(teacher_shape.n_layers, list(spec.keep_layers) if spec.keep_layers is not None
                              else None, spec.every_k)
        return teacher_shape.pruned(len(keep))
    raise ValueError(f"unknown model source {spec.source!r}")


def plan_from_config(cfg, tokenizer, device: torch.device, world_size: int = 1, *, trains: bool = True,
                     distils: bool = True, evaluates_teacher: bool = False) -> Plan:
    """`trains`: a student is trained; `distils`: with the teacher; `evaluates_teacher`: only the teacher runs."""
    m, t = cfg.model, cfg.train
    vocab = len(tokenizer) if tokenizer is not None else int(m.tokenizer_vocab)
    dev = str(device)
    kd = trains and distils
    need_teacher = kd or evaluates_teacher or m.student.source == "pruned"
    teacher = None
    t_shape = spec_shape(m.teacher, vocab) if need_teacher else None
    if need_teacher:
        tdev = teacher_device(cfg.model.teacher, device)
        teacher = Role(shape=t_shape, dtype_bytes=DTYPE_BYTES[load_dtype(m.teacher.dtype, tdev)], device=str(tdev))
    student = None
    if not evaluates_teacher:
        s = m.student
        student = Role(shape=spec_shape(s, vocab, t_shape), dtype_bytes=DTYPE_BYTES[load_dtype(s.dtype, device)],
                       device=dev, trainable=trains, lora_r=int(s.lora.get("r", 16)) if s.lora else 0,
                       lora_targets=list(s.lora["target_modules"]) if s.lora and s.lora.get("target_modules")
                       else None, checkpointing=bool(s.gradient_checkpointing))
    amp = autocast_dtype(t.precision, device) if device.type == "cuda" else None
    plan = Plan(stage="train" if trains else "eval", student=student, teacher=teacher if kd or
                evaluates_teacher else None, micro_batch=int(t.micro_batch), global_batch=int(t.global_batch),
                max_len=int(cfg.dataset.max_len), max_prompt_len=int(cfg.dataset.max_prompt_len),
                amp_bytes=2 if amp is not None else 4, loss_impl=str(t.loss_impl), chunk=int(t.loss_chunk_size),
                world_size=world_size, fsdp=bool(t.fsdp) and world_size > 1, eval_batch=int(cfg.eval.batch_size),
                max_new_tokens=int(cfg.eval.max_new_tokens),
                logit_cache_mb=None if t.get("fused_logit_cache_mb") is None else float(t.fused_logit_cache_mb))
    if m.student.source == "pruned" and teacher is not None and plan.teacher is None:
        plan.resident.append(teacher)   # loaded to build the pruned student, kept in the run's cache
    return plan


def check_run(cfg, tokenizer, device: torch.device, world_size: int = 1, **task) -> Optional[Report]:
    """The runner's pre-flight: warn near the limit, refuse (PreflightError) above it. `task`: the keyword
    arguments of plan_from_config saying what the run does."""
    try:
        plan = plan_from_config(cfg, tokenizer, device, world_size, **task)
    except Exception as e:   # a config we cannot read must not stop the run
        log.warning("pre-flight memory check skipped: %s: %s", type(e).__name__, e)
        return None
    report = check(plan, margin=float(cfg.train.preflight_margin))
    if not report.ok:
        raise PreflightError(report.message)
    if report.warn:
        log.warning("%s", report.message)
    else:
        log.info("%s", report.message)
    return report


def model_positions(cfg, *, trains: bool, distils: bool, evaluates_teacher: bool) -> Dict[str, Optional[int]]:
    """{role: the longest sequence it takes} for the models of the run, from their configs (no weights)."""
    m = cfg.model
    vocab = int(m.tokenizer_vocab)   # positions do not depend on it
    try:
        t_shape = spec_shape(m.teacher, vocab) if (distils or evaluates_teacher or m.student.source == "pruned") \
            else None
        s_shape = None if evaluates_teacher else spec_shape(m.student, vocab, t_shape)
    except Exception as e:   # noqa: BLE001 - a config we cannot read is the loader's to report
        log.info("length check skipped: %s: %s", type(e).__name__, e)
        return {}
    out = {}
    if t_shape is not None and (trains and distils or evaluates_teacher or m.teacher.finetune):
        out["teacher"] = t_shape.positions
    if s_shape is not None:
        out["student"] = s_shape.positions
    return out


def check_lengths(cfg, tokenizer, train_lengths: Sequence[int], prompt_lengths: Mapping[str, Sequence[int]], *,
                  trains: bool, distils: bool, evaluates_teacher: bool) -> None:
    """Refuse, before any weights load, a sequence longer than a model of the run takes: a training sequence
    (after dataset.max_len) for the models that train on it, a prompt (after eval.max_prompt_len) plus one new
    token for the model that is evaluated. Position embeddings end there: past them a run fails after its
    training. `prompt_lengths`: {benchmark: token count of each prompt as generation will see it}."""
    m, errors = cfg.model, []
    for role, positions in model_positions(cfg, trains=trains, distils=distils,
                                           evaluates_teacher=evaluates_teacher).items():
        if not positions:
            continue
        where = f"model.{role}.arch.n_positions" if m[role].source == "scratch" else f"the config of model.{role}"
        # the student trains on them; the teacher is distilled on them, or fine-tuned on them first
        sees_training = (trains and (role == "student" or distils)) or (role == "teacher" and bool(m.teacher.finetune))
        if sees_training and train_lengths and max(train_lengths) > positions:
            errors.append(f"training sequences of up to {max(train_lengths)} tokens (dataset.max_len="
                          f"{cfg.dataset.max_len}) are longer than the {positions} positions of the {role} ({where}): "
                          "lower dataset.max_len and dataset.max_prompt_len, or use a larger model")
        if (role == "teacher") == evaluates_teacher:
            for bench, lengths in prompt_lengths.items():
                if lengths and max(lengths) + 1 > positions:
                    errors.append(f"{bench}: prompts of up to {max(lengths)} tokens (eval.max_prompt_len="
                                  f"{cfg.eval.max_prompt_len}) leave no room for a new token in the {positions} "
                                  f"positions of the {role} ({where}): lower eval.max_prompt_len (prompts are cut "
                                  "to it) or use a larger model")
    if errors:
        raise ConfigError("the sequences of this run do not fit its models:\n  - " + "\n  - ".join(errors))
