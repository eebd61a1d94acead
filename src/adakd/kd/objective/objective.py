"""`KDObjective`: the KD term of the training loss, with the LATF schedule and the temperature policy as state.

    objective = build_objective(method_cfg, adakd_cfg, total_steps=..., impl=..., chunk_size=..., seed=...)
    loss, stats = objective(student, teacher, labels, telemetry=False)   # once per micro-batch
    objective.step_end(kd_loss)                                          # once per optimizer step
    objective.ratio, .parameters(), .state_dict(), .load_state_dict(sd)

One entry point for every input form (kd.objective.inputs): logits and logits (reference or chunked),
`HiddenStates` and `HiddenStates` (the fused path; impl "reference" materialises the logits as the
oracle), logits and a `TeacherTopK` (the teacher cache: dense rebuild or k + 1 buckets).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from ...schema.adakd import RANGES as ADAKD_RANGES
from ...schema.adakd import AdakdConfig
from ...schema.method import MethodConfig
from ...schema.train import TeacherCacheConfig, TrainConfig
from ..adaptive.difficulty import BucketMetric, DifficultyMetric
from ..adaptive.ratio import RatioSchedule, build_ratio_schedule
from ..adaptive.temperature import TAU_HALVES, TemperaturePolicy, build_temperature
from ..losses import Divergence, build_divergence
from ..losses.base import check_in
from ..losses.sparse import FORMS, BucketDivergence, TeacherTopK
from .inputs import HiddenStates, check_chunk, check_heads, check_impl, check_shapes
from .pipeline import run_pipeline
from .rows import HiddenRows, LogitRows, ReferenceRows, SparseTeacherRows
from .vocab import DEFAULT_MAX_VOCAB_PAD, shared_vocab

Side = Union[Tensor, HiddenStates, TeacherTopK]
_TRAIN, _TOPK = TrainConfig(), TeacherCacheConfig()


class KDObjective:
    def __init__(
        self,
        divergence: Optional[Divergence],
        *,
        metric: DifficultyMetric,
        schedule: RatioSchedule,
        temperature: TemperaturePolicy,
        impl: str = _TRAIN.loss_impl,
        chunk_size: int = _TRAIN.loss_chunk_size,
        generator: Optional[torch.Generator] = None,
        topk_form: str = _TOPK.form,
        topk_tail: str = _TOPK.tail,
        max_vocab_pad: int = DEFAULT_MAX_VOCAB_PAD,
        logit_cache_mb: Optional[float] = _TRAIN.fused_logit_cache_mb,
        hold_tau: Optional[Tuple[int, float]] = None,
        tau_half: str = "both",
    ):
        if topk_form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {topk_form!r}")
        self.divergence = divergence
        self.metric = metric
        self.schedule = schedule
        self.temperature = temperature
        self.impl = check_impl(impl)
        self.chunk_size = check_chunk(chunk_size)
        self.generator = generator
        self.topk_form, self.topk_tail = topk_form, topk_tail
        self.max_vocab_pad = int(max_vocab_pad)
        # fused path with scoring: MiB of pass-1 logits kept for pass 2 (0 = recompute every kept token;
        # None = derived from the memory floor, kd.objective.logit_cache.auto_budget_bytes)
        self.logit_cache_mb = None if logit_cache_mb is None else float(logit_cache_mb)
        # (token id, tau): that target's temperature held fixed whatever the policy says (adakd.end_tau)
        self.hold_tau = hold_tau
        # "warm" / "cool": only the temperatures above / below 1 are applied (adakd.tau_half, a diagnostic)
        if tau_half not in TAU_HALVES:
            raise ValueError(f"adakd.tau_half must be one of {TAU_HALVES}, got {tau_half!r}")
        self.tau_half = tau_half

    def __repr__(self) -> str:
        return (
            f"KDObjective({self.divergence!r}, metric={self.metric.name}, schedule={self.schedule!r}, "
            f"temperature={self.temperature!r}, impl={self.impl}, chunk_size={self.chunk_size})"
        )

    @property
    def ratio(self) -> float:
        return self.schedule.ratio

    # ------------------------------------------------------------------------------------ the loss
    def __call__(
        self, student: Union[Tensor, HiddenStates], teacher: Side, labels: Tensor, telemetry: bool = False
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """KD loss of one micro-batch and its statistics; labels [B, L] (-100 = not a response token)."""
        if isinstance(teacher, TeacherTopK):
            if not isinstance(student, Tensor):
                raise TypeError("a top-k teacher is compared with student logits, not hidden states")
            return self._topk(student, teacher, labels, telemetry)
        if isinstance(student, HiddenStates) != isinstance(teacher, HiddenStates):
            raise TypeError("student and teacher must both be logits or both be HiddenStates")
        if isinstance(student, HiddenStates):
            return self._hidden(student, teacher, labels, telemetry)
        return self._logits(student, teacher, labels, telemetry)

    def _options(self, telemetry: bool) -> Dict[str, Any]:
        return dict(div=self.divergence, metric=self.metric, ratio=self.ratio, policy=self.temperature,
                    chunk_size=self.chunk_size, telemetry=telemetry, hold_tau=self.hold_tau,
                    tau_half=self.tau_half)

    def _logits(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, telemetry: bool):
        check_shapes(student_logits[..., :1], teacher_logits[..., :1], labels)
        v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], self.max_vocab_pad)
        impl = "reference" if self.impl == "reference" else "chunked"
        src = (ReferenceRows if impl == "reference" else LogitRows)(student_logits, teacher_logits, v)
        return run_pipeline(src, (student_logits,), labels, impl=impl, fused=False, **self._options(telemetry))

    def _topk(self, student_logits: Tensor, teacher: TeacherTopK, labels: Tensor, telemetry: bool):
        """Against a top-k teacher. form "dense": the teacher row is rebuilt over the whole vocabulary (top-k
        exact, the tail mass spread evenly over the other tokens) and the usual divergence / difficulty code
        runs on it; "buckets": both distributions are reduced to k + 1 buckets (top-k and tail; `topk_tail` is
        then the teacher-tail approximation under tau != 1). kd.losses.sparse. Always the chunked path."""
        if tuple(teacher.shape) != tuple(student_logits.shape[:-1]) or tuple(labels.shape) != tuple(
            student_logits.shape[:-1]
        ):
            raise ValueError(
                f"student logits {tuple(student_logits.shape)}, top-k teacher rows {tuple(teacher.shape)} and "
                f"labels {tuple(labels.shape)} must agree in all but the logits' last dimension"
            )
        if self.temperature.standardize:
            raise ValueError(
                "adakd.temperature=logit_std standardises the teacher's full logits, which a top-k teacher "
                "cache does not have; use the live teacher (train.teacher_cache.enabled=false)"
            )
        if teacher.ids.numel() and int(teacher.ids.max()) >= student_logits.shape[-1]:
            raise ValueError(
                f"top-k teacher ids reach {int(teacher.ids.max())}, beyond the student's "
                f"{student_logits.shape[-1]} logits (the cache was built for another vocabulary)"
            )
        src = SparseTeacherRows(student_logits, teacher, dense=self.topk_form == "dense")
        options = self._options(telemetry)
        if self.topk_form == "buckets":
            options["div"] = None if self.divergence is None else BucketDivergence(self.divergence, tail=self.topk_tail)
            options["metric"] = BucketMetric(self.metric)
        return run_pipeline(src, (student_logits,), labels, impl="chunked", fused=False, **options)

    def _hidden(self, student: HiddenStates, teacher: HiddenStates, labels: Tensor, telemetry: bool):
        """From final hidden states [B, L, H] and LM-head weights [V, H] (+ biases [V]): the fused two-pass
        path; impl "reference" materialises the logits (the oracle)."""
        check_shapes(student.hidden[..., :1], teacher.hidden[..., :1], labels, what="hidden states")
        check_heads(student, teacher)
        v = shared_vocab(student.vocab, teacher.vocab, self.max_vocab_pad)
        if self.impl == "reference":
            bs = None if student.bias is None else student.bias[:v]
            bt = None if teacher.bias is None else teacher.bias[:v]
            s_logits = F.linear(student.hidden, student.weight[:v], bs)
            with torch.no_grad():
                t_logits = F.linear(teacher.hidden, teacher.weight[:v], bt)
            return self._logits(s_logits, t_logits, labels, telemetry)
        src = HiddenRows(student.hidden, student.weight, student.bias, teacher.hidden, teacher.weight,
                         teacher.bias, v,
                         cache_bytes=None if self.logit_cache_mb is None else self.logit_cache_mb * 2**20)
        try:
            return run_pipeline(src, (student.hidden, student.weight, student.bias), labels, impl="fused",
                                fused=True, **self._options(telemetry))
        finally:
            src.cache = src.work = None  # the loss holds its gradients already: free the cached logits now

    # --------------------------------------------------------------------------------------- state
    def step_end(self, kd_loss: float) -> float:
        """Once per optimizer step, with that step's KD loss: advances LATF / the schedule and CTKD."""
        self.temperature.step_end()
        return self.schedule.step_end(kd_loss)

    def parameters(self) -> List[torch.nn.Parameter]:
        return self.temperature.parameters()

    def to(self, device: torch.device | str) -> "KDObjective":
        self.temperature.to(device)
        return self

    def state_dict(self) -> Dict[str, Any]:
        sd: Dict[str, Any] = {
            "ratio_schedule": self.schedule.state_dict(),
            "temperature": self.temperature.state_dict(),
        }
        if self.generator is not None:
            sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["ratio_schedule"])
        self.temperature.load_state_dict(state["temperature"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def typed(cfg: Any, schema: type) -> Any:
    """`cfg` as an instance of the schema dataclass: a dataclass as is; a dict or DictConfig merged over the
    schema's defaults (so every field exists, with its one default)."""
    if isinstance(cfg, schema):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg or {}))


def build_objective(
    method_cfg: Any,
    adakd_cfg: Any,
    *,
    total_steps: int,
    impl: str = _TRAIN.loss_impl,
    chunk_size: int = _TRAIN.loss_chunk_size,
    seed: int = 0,
    teacher_cache: Any = None,
    logit_cache_mb: Optional[float] = _TRAIN.fused_logit_cache_mb,
    eos_id: Optional[int] = None,
) -> KDObjective:
    """The trainer's objective from the `method`, `adakd` (and `train.teacher_cache`) config groups.

    adakd.latf false -> r = 1 always; adakd.idts false -> the adakd.temperature strategy.
    method.divergence "none" (pure SFT) gives an objective whose KD term is a connected zero.
    adakd.end_tau (a diagnostic) holds the temperature of the end-of-answer token (eos_id) at that value.
    """
    method, a = typed(method_cfg, MethodConfig), typed(adakd_cfg, AdakdConfig)
    topk = typed(teacher_cache, TeacherCacheConfig)
    div = None if method.divergence in (None, "none") else build_divergence(method.divergence, **method.params)
    generator = torch.Generator().manual_seed(int(seed))
    metric = DifficultyMetric(a.metric, k=int(a.nmtkd_k), generator=generator)
    schedule = build_ratio_schedule(
        a.ratio_schedule,
        total_steps,
        enabled=a.latf,
        ratio_start=a.ratio_start,
        ratio_end=a.ratio_end,
        ema_beta=a.ema_beta,
        warmup_frac=a.warmup_frac,
        epsilon=a.epsilon,
        delta=a.delta,
        ratio_min=a.ratio_min,
    )
    temperature = build_temperature(
        idts=a.idts,
        temperature=a.temperature,
        c=a.c,
        tau_base=a.tau_base,
        direction=a.direction,
        total_steps=total_steps,
        ctkd_lambda_start=a.ctkd_lambda_start,
        ctkd_lambda_end=a.ctkd_lambda_end,
        ctkd_ramp_frac=a.ctkd_ramp_frac,
        ctkd_tau_min=a.ctkd_tau_min,
    )
    return KDObjective(div, metric=metric, schedule=schedule, temperature=temperature, impl=impl,
                       chunk_size=chunk_size, generator=generator, topk_form=topk.form, topk_tail=topk.tail,
                       logit_cache_mb=logit_cache_mb, hold_tau=end_of_answer_hold(a.end_tau, eos_id),
                       tau_half=a.tau_half)


def end_of_answer_hold(end_tau: Optional[float], eos_id: Optional[int]) -> Optional[Tuple[int, float]]:
    if end_tau is None:
        return None
    check_in("adakd", "end_tau", float(end_tau), ADAKD_RANGES["end_tau"])
    if eos_id is None:
        raise ValueError("adakd.end_tau needs the tokenizer's end-of-sequence id (the tokenizer has none)")
    return int(eos_id), float(end_tau)
