"""What happens when: the learning-rate schedule, the order of the training examples, and seeding."""
from __future__ import annotations

import math
import random
from typing import Callable, List

import numpy as np
import torch

LR_SCHEDULES = ("cosine", "constant", "linear")


def lr_lambda(schedule: str, total: int, warmup: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """The LR multiplier at a step: linear warm-up, then cosine / linear decay to min_lr, or constant."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; choose one of {list(LR_SCHEDULES)}")
    floor = min_lr / lr if lr > 0 else 0.0

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))   # cosine
    return f


def total_steps(steps, epochs: float, n_examples: int, global_batch: int) -> int:
    """train.steps, or `epochs` passes over the training set in global batches."""
    if steps:
        return int(steps)
    return max(1, math.ceil(float(epochs) * n_examples / int(global_batch)))


class EpochSampler:
    """Deterministic order of training examples: a fresh permutation per epoch from (seed, epoch).

    The data position is then just the number of examples consumed, which makes resuming exact.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def take(self, position: int, count: int) -> List[int]:
        out = []
        while len(out) < count:
            epoch, offset = divmod(position, self.n)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            take = min(count - len(out), self.n - offset)
            out.extend(self._perm[offset:offset + take])
            position += take
        return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
