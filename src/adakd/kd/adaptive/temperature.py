"""Per-token temperatures for the kept tokens: IDTS and the Table 5 alternatives.

A policy returns tau [k] for the k kept tokens (or None: tau = 1, no scaling at all, which keeps the
plain base loss bit-exact). The objective divides the student and the teacher logits of token i by
tau_i and multiplies the token's divergence by tau_i^2. Interface shared by all policies:
`temperatures(scores_kept, n_kept, device, dtype)`, `uses_difficulty`, `standardize`,
`parameters()`, `step_end()`, `state_dict()` / `load_state_dict()`.

- IDTS (docs/method.md section 4): s_hat = tanh(log(s_i / median(s_kept))), median = torch.median (the
  lower of the two middle values for an even count); tau_i = tau_base·exp(-c·s_hat) ("inverse",
  hard tokens get tau < 1) or exp(+c·s_hat) ("direct"); detached. With c = 0.5, tau_base = 1:
  tau in [e^-0.5, e^0.5] = [0.607, 1.649]. s = 0 gives s_hat = -1; median = 0 with s > 0 gives +1;
  0/0 gives s_hat = 0 (no NaN).
- constant: tau_base for every token.
- CTKD (Li et al. 2023): one learnable global temperature behind a gradient-reversal layer, so the
  temperature ascends the KD loss while the student descends it; the reversal strength lambda
  follows a cosine ramp from lambda_start to lambda_end over the first ramp_frac of training
  (released AdaKD code: over all of training). The parameter is exposed by `parameters()` for the
  trainer's optimizer; tau is clamped below at tau_min so it can never reach 0.
- logit standardisation (Sun et al. 2024): z-score each row of logits (mean and unbiased std over
  the finite entries, + 1e-7), then divide by tau_base.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ...schema.adakd import RANGES, AdakdConfig
from ..losses.base import check_in, check_range, check_total_steps

_A = AdakdConfig()   # the defaults, defined once in the schema

DIRECTIONS = ("inverse", "direct")
TAU_HALVES = ("both", "warm", "cool")   # adakd.tau_half: which temperatures are applied (a diagnostic)
TEMPERATURES = ("constant", "ctkd", "logit_std")


@torch.no_grad()
def idts_temperatures(
    scores: Tensor, c: float = _A.c, tau_base: float = _A.tau_base, direction: str = _A.direction
) -> Tensor:
    """IDTS temperatures for the kept tokens' difficulties `scores` [k] -> tau [k] (detached)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"IDTS direction must be one of {DIRECTIONS}, got {direction!r}")
    if scores.numel() == 0:
        return scores.new_empty(0)
    median = torch.median(scores)
    s_hat = torch.tanh(torch.log(scores / median))
    s_hat = torch.nan_to_num(s_hat, nan=0.0)  # 0/0 (and negative rounding noise): as hard as the median
    sign = -1.0 if direction == "inverse" else 1.0
    return tau_base * torch.exp(sign * c * s_hat)


def standardize_logits(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-wise z-score over the finite entries; -inf entries stay -inf. Differentiable."""
    finite = x.isfinite()
    count = finite.sum(-1, keepdim=True)
    mean = torch.where(finite, x, 0.0).sum(-1, keepdim=True) / count.clamp_min(1)
    # Centre only the finite entries, so no inf - inf or 0 * inf ever reaches the backward pass.
    centred = torch.where(finite, x - mean, 0.0)
    std = (centred.square().sum(-1, keepdim=True) / (count - 1).clamp_min(1)).sqrt()
    return torch.where(finite, centred / (std + eps), x)


STATE_FIELDS = ("step",)   # running state, not settings: left out of repr


class TemperaturePolicy:
    name = "base"
    uses_difficulty = False
    standardize = False

    def __repr__(self) -> str:
        # the settings (not the running state), e.g. LATFController(total_steps=1500, ema_beta=0.99, ...)
        settings = {k: v for k, v in vars(self).items()
                    if not k.startswith("_") and k not in STATE_FIELDS and isinstance(v, (bool, int, float, str))}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"

    def temperatures(
        self, scores_kept: Optional[Tensor], n_kept: int, device: torch.device, dtype: torch.dtype
    ) -> Optional[Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def parameters(self) -> List[torch.nn.Parameter]:
        return []

    def step_end(self) -> None:
        pass

    def to(self, device: torch.device | str) -> "TemperaturePolicy":
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.name}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"temperature state is for {state.get('kind')!r}, this policy is {self.name!r}")


class ConstantTemperature(TemperaturePolicy):
    name = "constant"

    def __init__(self, tau_base: float = _A.tau_base):
        check_in("temperature", "tau_base", float(tau_base), RANGES["tau_base"])
        self.tau_base = float(tau_base)

    def temperatures(self, scores_kept, n_kept, device, dtype):
        if self.tau_base == 1.0:
            return None
        return torch.full((n_kept,), self.tau_base, device=device, dtype=dtype)


class IDTS(TemperaturePolicy):
    name = "idts"
    uses_difficulty = True

    def __init__(self, c: float = _A.c, tau_base: float = _A.tau_base, direction: str = _A.direction):
        check_in("idts", "c", float(c), RANGES["c"])
        check_in("idts", "tau_base", float(tau_base), RANGES["tau_base"])
        if direction not in DIRECTIONS:
            raise ValueError(f"idts direction must be one of {DIRECTIONS}, got {direction!r}")
        self.c, self.tau_base, self.direction = float(c), float(tau_base), direction

    def temperatures(self, scores_kept, n_kept, device, dtype):
        if scores_kept is None:
            raise ValueError("IDTS needs the difficulty of the kept tokens")
        return idts_temperatures(scores_kept.to(dtype), self.c, self.tau_base, self.direction)


class LogitStandardization(ConstantTemperature):
    name = "logit_std"
    standardize = True


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.lam * grad, None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    """Identity forward; backward multiplies the gradient by -lam."""
    return _GradientReversal.apply(x, lam)


class CTKDTemperature(TemperaturePolicy):
    name = "ctkd"

    def __init__(
        self,
        total_steps: int,
        *,
        init: float = _A.tau_base,
        lambda_start: float = _A.ctkd_lambda_start,
        lambda_end: float = _A.ctkd_lambda_end,
        ramp_frac: float = _A.ctkd_ramp_frac,
        tau_min: float = _A.ctkd_tau_min,
    ):
        total_steps = check_total_steps(total_steps)
        check_in("ctkd", "ramp_frac", float(ramp_frac), RANGES["ctkd_ramp_frac"])
        check_in("ctkd", "tau_min", float(tau_min), RANGES["ctkd_tau_min"])
        check_range("ctkd", "init", float(init), float(tau_min), None)
        self.total_steps, self.ramp_frac, self.tau_min = int(total_steps), float(ramp_frac), float(tau_min)
        self.lambda_start, self.lambda_end = float(lambda_start), float(lambda_end)
        self.temperature = torch.nn.Parameter(torch.tensor(float(init)))
        self.step = 0

    @property
    def ramp_steps(self) -> int:
        return max(1, math.floor(self.ramp_frac * self.total_steps + 1e-9))

    @property
    def lam(self) -> float:
        progress = min(self.step, self.ramp_steps) / self.ramp_steps
        return self.lambda_end + (self.lambda_start - self.lambda_end) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def temperatures(self, scores_kept, n_kept, device, dtype):
        tau = gradient_reversal(self.temperature, self.lam).clamp_min(self.tau_min)
        return tau.to(device=device, dtype=dtype).expand(n_kept)

    def parameters(self) -> List[torch.nn.Parameter]:
        return [self.temperature]

    def step_end(self) -> None:
        self.step += 1

    def to(self, device: torch.device | str) -> "CTKDTemperature":
        # Keep the same Parameter object, so an optimizer built earlier still holds it.
        self.temperature.data = self.temperature.data.to(device)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.name, "step": self.step, "temperature": float(self.temperature.detach())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.step = int(state["step"])
        with torch.no_grad():
            self.temperature.fill_(float(state["temperature"]))


def build_temperature(
    *,
    idts: bool,
    temperature: str = _A.temperature,
    c: float = _A.c,
    tau_base: float = _A.tau_base,
    direction: str = _A.direction,
    total_steps: int = 1,
    ctkd_init: Optional[float] = None,
    ctkd_lambda_start: float = _A.ctkd_lambda_start,
    ctkd_lambda_end: float = _A.ctkd_lambda_end,
    ctkd_ramp_frac: float = _A.ctkd_ramp_frac,
    ctkd_tau_min: float = _A.ctkd_tau_min,
) -> TemperaturePolicy:
    """adakd.idts true -> IDTS; false -> the `temperature` strategy (constant uses tau_base)."""
    if temperature not in TEMPERATURES:
        raise ValueError(
            f"unknown temperature strategy {temperature!r}; choose one of: {', '.join(TEMPERATURES)}"
        )
    if idts:
        return IDTS(c=c, tau_base=tau_base, direction=direction)
    if temperature == "constant":
        return ConstantTemperature(tau_base)
    if temperature == "logit_std":
        return LogitStandardization(tau_base)
    return CTKDTemperature(
        total_steps,
        init=tau_base if ctkd_init is None else ctkd_init,
        lambda_start=ctkd_lambda_start,
        lambda_end=ctkd_lambda_end,
        ramp_frac=ctkd_ramp_frac,
        tau_min=ctkd_tau_min,
    )
