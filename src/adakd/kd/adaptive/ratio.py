"""LATF: how many of the valid tokens are distilled, r in (0, 1].

All schedules share one interface: `.ratio` (the ratio for the next forward), `.step_end(kd_loss)`
once per optimizer step, `state_dict()` / `load_state_dict()` for checkpoints.

`LATFController` is docs/method.md section 3 exactly:
- r starts at 1. After each optimizer step: EMA L_bar <- beta·L_bar + (1 - beta)·L, the first loss
  initialises it.
- Warm-up: the first W = floor(warmup_frac · total_steps) steps keep r = 1; after step W,
  L_ref <- L_bar (after step 1 if W = 0).
- Afterwards: L_bar < L_ref·(1 - eps) -> r <- max(r_min, r·(1 - delta)), L_ref <- L_bar (loss falling:
  focus on harder tokens); L_bar > L_ref·(1 + eps) -> r <- min(1, r·(1 + delta)), L_ref <- L_bar;
  otherwise nothing changes.
The fixed / linear / cosine schedules are the Table 4 ablations.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ...schema.adakd import RANGES, RATIO, AdakdConfig
from ..losses.base import check_in, check_total_steps

_A = AdakdConfig()   # the defaults, defined once in the schema


def _check_ratio(key: str, value: float) -> float:
    check_in("ratio schedule", key, float(value), RATIO)
    return float(value)


STATE_FIELDS = ("step", "ema", "l_ref")   # running state, not settings: left out of repr


class RatioSchedule:
    kind = "base"

    def __repr__(self) -> str:
        # the settings (not the running state), e.g. LATFController(total_steps=1500, ema_beta=0.99, ...)
        settings = {k: v for k, v in vars(self).items()
                    if not k.startswith("_") and k not in STATE_FIELDS and isinstance(v, (bool, int, float, str))}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"

    def __init__(self, total_steps: int):
        self.total_steps = check_total_steps(total_steps)
        self.step = 0
        self._ratio = 1.0

    @property
    def ratio(self) -> float:
        return self._ratio

    def step_end(self, kd_loss: float) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "ratio": self._ratio, "total_steps": self.total_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                f"ratio schedule state is for {state.get('kind')!r}, this schedule is {self.kind!r}"
            )
        self.step = int(state["step"])
        self._ratio = float(state["ratio"])
        self.total_steps = int(state.get("total_steps", self.total_steps))


class ConstantRatio(RatioSchedule):
    """r = 1 (LATF off) or any fixed r (the `fixed` ablation)."""

    kind = "fixed"

    def __init__(self, total_steps: int, ratio: float = 1.0, *, key: str = "ratio"):
        super().__init__(total_steps)
        self._ratio = _check_ratio(key, ratio)

    def step_end(self, kd_loss: float) -> float:
        self.step += 1
        return self._ratio


class _Interpolated(RatioSchedule):
    def __init__(self, total_steps: int, start: float = _A.ratio_start, end: float = _A.ratio_end):
        super().__init__(total_steps)
        self.start, self.end = _check_ratio("ratio_start", start), _check_ratio("ratio_end", end)
        self._ratio = self._at(0)

    def _progress(self, step: int) -> float:
        return min(step, self.total_steps) / self.total_steps

    def _at(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def step_end(self, kd_loss: float) -> float:
        self.step += 1
        self._ratio = self._at(self.step)
        return self._ratio


class LinearRatio(_Interpolated):
    """r goes linearly from `start` (before step 1) to `end` (after the last step)."""

    kind = "linear"

    def _at(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._progress(step)


class CosineRatio(_Interpolated):
    """r follows half a cosine from `start` to `end` over training."""

    kind = "cosine"

    def _at(self, step: int) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * self._progress(step)))


class LATFController(RatioSchedule):
    kind = "latf"

    def __init__(
        self,
        total_steps: int,
        *,
        ema_beta: float = _A.ema_beta,
        warmup_frac: float = _A.warmup_frac,
        epsilon: float = _A.epsilon,
        delta: float = _A.delta,
        ratio_min: float = _A.ratio_min,
    ):
        super().__init__(total_steps)
        for key, value in (("ema_beta", ema_beta), ("warmup_frac", warmup_frac), ("epsilon", epsilon),
                           ("delta", delta)):
            check_in("latf", key, value, RANGES[key])
        self.ema_beta, self.warmup_frac = float(ema_beta), float(warmup_frac)
        self.epsilon, self.delta = float(epsilon), float(delta)
        self.ratio_min = _check_ratio("ratio_min", ratio_min)
        self.ema: Optional[float] = None
        self.l_ref: Optional[float] = None

    @property
    def warmup_steps(self) -> int:
        # the 1e-9 keeps e.g. 0.29 * 100 (= 28.999999999999996 in binary) at the intended 29 steps
        return math.floor(self.warmup_frac * self.total_steps + 1e-9)

    def step_end(self, kd_loss: float) -> float:
        loss = float(kd_loss)
        if not math.isfinite(loss):
            # A NaN/inf loss would poison the EMA forever; the step still counts.
            self.step += 1
            return self._ratio
        self.step += 1
        self.ema = loss if self.ema is None else self.ema_beta * self.ema + (1.0 - self.ema_beta) * loss
        if self.step <= self.warmup_steps:
            self._ratio = 1.0
            if self.step == self.warmup_steps:
                self.l_ref = self.ema
            return self._ratio
        if self.l_ref is None:  # no warm-up (W = 0) or resumed mid warm-up state
            self.l_ref = self.ema
            return self._ratio
        if self.ema < self.l_ref * (1.0 - self.epsilon):
            self._ratio = max(self.ratio_min, self._ratio * (1.0 - self.delta))
            self.l_ref = self.ema
        elif self.ema > self.l_ref * (1.0 + self.epsilon):
            self._ratio = min(1.0, self._ratio * (1.0 + self.delta))
            self.l_ref = self.ema
        return self._ratio

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(ema=self.ema, l_ref=self.l_ref)
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema = None if state.get("ema") is None else float(state["ema"])
        self.l_ref = None if state.get("l_ref") is None else float(state["l_ref"])


SCHEDULES = ("latf", "fixed", "linear", "cosine")


def build_ratio_schedule(
    kind: str,
    total_steps: int,
    *,
    enabled: bool = True,
    ratio_start: float = _A.ratio_start,
    ratio_end: float = _A.ratio_end,
    ema_beta: float = _A.ema_beta,
    warmup_frac: float = _A.warmup_frac,
    epsilon: float = _A.epsilon,
    delta: float = _A.delta,
    ratio_min: float = _A.ratio_min,
) -> RatioSchedule:
    """`enabled=False` (adakd.latf false) -> r = 1 always. `fixed` holds r = ratio_end throughout."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown ratio schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
    if not enabled:
        return ConstantRatio(total_steps, 1.0)
    if kind == "latf":
        return LATFController(
            total_steps,
            ema_beta=ema_beta,
            warmup_frac=warmup_frac,
            epsilon=epsilon,
            delta=delta,
            ratio_min=ratio_min,
        )
    if kind == "fixed":
        return ConstantRatio(total_steps, ratio_end, key="ratio_end")
    cls = LinearRatio if kind == "linear" else CosineRatio
    return cls(total_steps, ratio_start, ratio_end)
