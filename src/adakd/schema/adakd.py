"""`adakd` group: AdaKD on top of the base divergence -- LATF selection and IDTS temperatures
(conf/adakd/). Each field is defined here once, with its default; conf/adakd/*.yaml hold only what differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from .ranges import Range


@dataclass
class AdakdConfig:
    # Preset name (conf/adakd/<name>.yaml): full, latf, idts, none.
    name: str = "full"
    latf: bool = True  # token selection (ratio < 1 allowed)
    idts: bool = True  # per-token temperatures
    metric: str = "hellinger"  # difficulty metric used for selection and IDTS
    nmtkd_k: int = 5
    # LATF ratio: "latf" (loss-trend controller) or the Table 4 ablations fixed / linear / cosine
    # (fixed holds ratio_end for the whole run; linear / cosine go from ratio_start to ratio_end).
    ratio_schedule: str = "latf"
    ratio_start: float = 1.0
    ratio_end: float = 0.75
    ema_beta: float = 0.99
    warmup_frac: float = 0.05
    epsilon: float = 0.05
    delta: float = 0.05
    ratio_min: float = 0.1
    # IDTS
    c: float = 0.5
    tau_base: float = 1.0
    direction: str = "inverse"
    # A diagnostic (docs/reproducing.md, what IDTS's gain is made of): the temperature of every kept token whose
    # target is the end-of-sequence token held at this value whatever the policy gives it; null = not held.
    end_tau: Optional[float] = None
    # A diagnostic: "warm" applies only the temperatures above 1 (the others are 1), "cool" only those below 1;
    # "both" is the method.
    tau_half: str = "both"
    # Temperature when idts is false (Table 5 ablations): constant (tau_base), ctkd, logit_std.
    temperature: str = "constant"
    # CTKD (temperature: ctkd): learned global temperature (starts at tau_base) behind a gradient
    # reversal whose strength lambda ramps (cosine) from ctkd_lambda_start to ctkd_lambda_end over the
    # first ctkd_ramp_frac of the steps; tau never goes below ctkd_tau_min.
    ctkd_lambda_start: float = 0.0
    ctkd_lambda_end: float = 1.0
    ctkd_ramp_frac: float = 1.0
    ctkd_tau_min: float = 0.1
    # How often (in optimizer steps) to collect tensor telemetry (tau histograms, entropies).
    telemetry_every: int = 50


# A token-selection ratio: the share of tokens kept (some token always is).
RATIO = Range(0.0, 1.0, lo_open=True)
# The valid values of the numeric settings, written once: experiment.config_check checks a config against them,
# the kd.adaptive constructors their arguments.
RANGES: Dict[str, Range] = {
    "ratio_start": RATIO,
    "ratio_end": RATIO,
    "ratio_min": RATIO,
    "ema_beta": Range(0.0, 1.0, hi_open=True),
    "warmup_frac": Range(0.0, 1.0),
    "epsilon": Range(0.0),
    "delta": Range(0.0, 1.0, hi_open=True),
    "c": Range(0.0),
    "tau_base": Range(0.0, lo_open=True),
    "end_tau": Range(0.0, lo_open=True),
    "nmtkd_k": Range(1),
    "telemetry_every": Range(0),
    "ctkd_ramp_frac": Range(0.0, 1.0),
    "ctkd_tau_min": Range(0.0, lo_open=True),
}
