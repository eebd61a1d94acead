"""Where a run computes and in which dtype: the device from train.device, the autocast dtype from
train.precision, the dtype weights are loaded in, and the teacher's own device (model.teacher.device)."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")   # train.precision


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(spec)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype on CUDA (None: fp32). CPU runs are fp32 throughout (half precision is slow there)."""
    if precision == "fp32" or device.type != "cuda":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            log.warning("train.precision=%s ignored on %s: fp32 is used", precision, device.type)
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_dtype(name: str, device: Optional[torch.device]) -> str:
    """The weights dtype to load: the config's on CUDA; float32 on CPU (the CPU path is fp32 throughout)."""
    if device is not None and device.type != "cuda" and name in ("bfloat16", "float16"):
        log.info("%s weights requested; loading float32 on %s", name, device.type)
        return "float32"
    return name


def teacher_device(spec, device: torch.device) -> torch.device:
    """The teacher spec's device (model.teacher.device, e.g. cuda:1, to keep the teacher off the student's GPU),
    else the run's device."""
    return pick_device(str(spec.device)) if spec.device else device
