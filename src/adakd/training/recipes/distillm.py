"""DistiLLM (Ko et al. 2024): skew KL with adaptive off-policy student-generated outputs (SGO).

The schedule, exactly as the released code (jongwooko/distillm, finetune.py) does it:

- `p` (the code's `adaptive_threshold`) starts at `prob_init` = 0. A validation loss is computed before
  the first step (the reference) and then every `val_every` optimizer steps. The rule
  (`val_reference: last_rise`, the released code):

      if L_val >= L_ref + val_loss_rise:  p <- min(prob_max, p + prob_step);  L_ref <- L_val

  i.e. L_ref is the loss at the last rise (at first: before training), NOT the previous evaluation; a
  falling loss never lowers L_ref. `val_reference: previous` compares with the previous evaluation instead
  (L_ref <- L_val after every evaluation).
- Per micro-batch, u ~ U[0, 1) from the recipe's own generator, p_fresh = p · g(step) with
  g = 1 - step/total (`replay_ratio: decreasing`, the code's default; `constant`: 1/2, `increasing`:
  step/total):
      u < p_fresh, or (u < p and the buffer is not full yet): the student samples responses for this
          micro-batch's prompts; they are added to the replay buffer and used;
      else u < p: a micro-batch drawn uniformly without replacement from the replay buffer is used;
      else: the dataset's micro-batch is used.
- The replay buffer is FIFO with `replay_capacity` (1000) examples: once full, each new sample evicts the
  oldest (the code's deque(maxlen=capacity)).

The validation loss (`val_loss`). `ce`, the default, is the released code's: the student's cross-entropy on
the dev responses, averaged as the mean of per-batch means (batches of train.micro_batch here). `kd` is a
named alternative: the method's plain base divergence (no LATF selection, tau = 1, so AdaKD's changing ratio
does not move it) between student and teacher on the dev responses, token-weighted. It runs as the trainer's
on_step_end hook, outside the loss, in eval mode and without gradient; `val_samples` caps the dev examples.

The "use student outputs now?" draws come from a generator per rank (the released code seeds each rank with
seed + rank): the same expected fraction on every rank, independent decisions.

Divergence: conf/method/distillm.yaml uses srkl, as the AdaKD authors' DistiLLM baseline does; sfkl is the
alternative (`method=distillm method.divergence=sfkl`; DistiLLM's own GPT-2 scripts use it for the 0.1B
student and srkl for the larger ones). AdaKD wraps the token loss when adakd=full. The replay buffer, p,
L_ref and the generator states are in the checkpoints.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ...kd.losses import build_divergence
from ...schema.recipes import DISTILLM
from ..validation import dev_losses
from .base import BatchSource
from .common import (
    PolicyEngine,
    Sampling,
    check_param,
    collate,
    pad_id_of,
    prompts_of,
    sample_responses,
    seeded_generator,
    to_examples,
    uniform,
)

_D = {k: p.default for k, p in DISTILLM.items()}   # the defaults (adakd.schema.recipes)


class AdaptiveProbability:
    """The probability of using student-generated outputs, driven by validation losses."""

    def __init__(self, init: float = _D["prob_init"], step: float = _D["prob_step"],
                 rise: float = _D["val_loss_rise"], maximum: float = _D["prob_max"],
                 reference: str = _D["val_reference"]):
        check_param("distillm", "val_reference", DISTILLM["val_reference"], reference)
        self.p, self.step, self.rise, self.maximum = float(init), float(step), float(rise), float(maximum)
        self.reference = reference
        self.ref_loss: float | None = None
        self.history: list[float] = []

    def update(self, val_loss: float) -> bool:
        """Feed one validation loss; True when p rose. The first one only sets the reference."""
        val_loss = float(val_loss)
        self.history.append(val_loss)
        if self.ref_loss is None:
            self.ref_loss = val_loss
            return False
        rose = val_loss >= self.ref_loss + self.rise
        if rose:
            self.p = min(self.maximum, self.p + self.step)
        if rose or self.reference == "previous":
            self.ref_loss = val_loss
        return rose

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "ref_loss": self.ref_loss, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.ref_loss = None if state.get("ref_loss") is None else float(state["ref_loss"])
        self.history = [float(x) for x in state.get("history", [])]


class ReplayBuffer:
    """FIFO buffer of generated training examples ({input_ids, labels} token lists), at most `capacity`."""

    def __init__(self, capacity: int = _D["replay_capacity"]):
        check_param("distillm", "replay_capacity", DISTILLM["replay_capacity"], capacity)
        self.capacity = int(capacity)
        self.items: list[dict[str, list[int]]] = []
        self.added = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def add(self, examples: Sequence[dict[str, list[int]]]) -> None:
        for ex in examples:
            self.items.append({"input_ids": list(ex["input_ids"]), "labels": list(ex["labels"])})
            self.added += 1
        if len(self.items) > self.capacity:
            del self.items[: len(self.items) - self.capacity]   # evict the oldest

    def sample(self, n: int, generator: torch.Generator) -> list[dict[str, list[int]]]:
        """n examples drawn uniformly without replacement (all of them when the buffer holds fewer)."""
        if not self.items:
            raise ValueError("the replay buffer is empty")
        order = torch.randperm(len(self.items), generator=generator)[: min(n, len(self.items))]
        return [self.items[i] for i in order.tolist()]

    # Compact checkpoint form: the token ids of all examples concatenated, plus their lengths.
    def state_dict(self) -> dict[str, Any]:
        lengths = [len(x["input_ids"]) for x in self.items]
        flat_ids = [t for x in self.items for t in x["input_ids"]]
        flat_labels = [t for x in self.items for t in x["labels"]]
        return {"capacity": self.capacity, "added": self.added,
                "lengths": torch.tensor(lengths, dtype=torch.int64),
                "input_ids": torch.tensor(flat_ids, dtype=torch.int64),
                "labels": torch.tensor(flat_labels, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.added = int(state.get("added", 0))
        ids, labels = state["input_ids"].tolist(), state["labels"].tolist()
        self.items, pos = [], 0
        for n in state["lengths"].tolist():
            self.items.append({"input_ids": ids[pos:pos + n], "labels": labels[pos:pos + n]})
            pos += n
        if len(self.items) > self.capacity:
            del self.items[: len(self.items) - self.capacity]


def fresh_fraction(replay_ratio: str, step: int, total: int) -> float:
    """g(step): the share of p that generates fresh samples (the rest of p replays)."""
    frac = min(1.0, max(0.0, step / max(1, total)))
    if replay_ratio == "constant":
        return 0.5
    if replay_ratio == "increasing":
        return frac
    return 1.0 - frac


class DistiLLMSource(BatchSource):
    name = "distillm"

    def __init__(self, *, student, teacher, tokenizer, seed: int, dev: Sequence[dict[str, list[int]]],
                 divergence: str, div_params: dict[str, Any] | None = None, schedule: AdaptiveProbability,
                 capacity: int = _D["replay_capacity"], replay_ratio: str = _D["replay_ratio"],
                 val_every: int = 0, val_loss: str = _D["val_loss"], val_batch: int = 16, chunk_size: int = 1024,
                 sampling: Sampling | None = None, max_len: int = 512, run_dir=None, rank: int = 0,
                 policy_engine: PolicyEngine | None = None):
        super().__init__(run_dir=run_dir, rank=rank)
        self.policy_engine = policy_engine       # vLLM sampling (sampling.engine=vllm), else the native sampler
        check_param("distillm", "replay_ratio", DISTILLM["replay_ratio"], replay_ratio)
        check_param("distillm", "val_loss", DISTILLM["val_loss"], val_loss)
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.seed = int(seed)
        self.dev = list(dev)
        self.divergence, self.div_params = divergence, dict(div_params or {})
        self.schedule = schedule
        self.buffer = ReplayBuffer(capacity)
        self.replay_ratio = replay_ratio
        self.val_every, self.val_loss_kind = int(val_every), val_loss
        self.val_batch, self.chunk_size = int(val_batch), int(chunk_size)
        self.sampling = sampling or Sampling()
        self.max_len = int(max_len)
        self.generator = seeded_generator(self.seed, f"distillm-decisions:r{rank}")   # ranks decide independently
        self.replay_generator = seeded_generator(self.seed, "distillm-replay")
        self.pad_id = pad_id_of(tokenizer)
        self.last_keys: list[str] = []
        self.last_prompts: list[list[int]] = []
        self.last_kind = "data"

    @property
    def prob(self) -> float:
        return self.schedule.p

    def keys_for(self, call: int, n: int) -> list[str]:
        return [f"distillm:r{self.rank}:c{call}:{j}" for j in range(n)]

    # -- the data source -------------------------------------------------------------------------------
    def next_batch(self, batch: dict[str, torch.Tensor], trainer) -> dict[str, torch.Tensor]:
        if self.schedule.ref_loss is None:   # the released code evaluates once before training
            self._validate(trainer, "val_loss_init")
        self.count("micro_batches")
        p = self.schedule.p
        u = uniform(self.generator)
        p_fresh = p * fresh_fraction(self.replay_ratio, int(trainer.step), int(trainer.total_steps))
        self.last_keys, self.last_prompts = [], []
        if u < p_fresh or (u < p and not self.buffer.full):
            prompts = prompts_of(batch)
            keys = self.keys_for(self.calls, len(prompts))
            engine = self.policy_engine.for_model(self.student) if self.policy_engine is not None else None
            responses = sample_responses(self.student, self.tokenizer, prompts, keys, seed=self.seed,
                                         sampling=self.sampling, max_len=self.max_len, engine=engine)
            examples = to_examples(prompts, responses)
            self.buffer.add(examples)
            self.last_keys, self.last_prompts, self.last_kind = keys, prompts, "fresh"
            self.count("fresh")
            return collate(examples, self.pad_id)
        if u < p:
            self.last_kind = "replay"
            self.count("replay")
            return collate(self.buffer.sample(batch["input_ids"].shape[0], self.replay_generator), self.pad_id)
        self.last_kind = "data"
        return batch

    # -- validation (a Trainer on_step_end hook) -------------------------------------------------------
    def on_step_end(self, trainer, row: dict[str, Any]) -> None:
        if self.val_every and int(trainer.step) % self.val_every == 0:
            self._validate(trainer)
        super().on_step_end(trainer, row)

    def _validate(self, trainer, key: str = "val_loss") -> None:
        loss = self.validation_loss(trainer)
        rose = self.schedule.update(loss)
        self._step_stats[key] = loss
        if key == "val_loss":
            self._step_stats["prob_rose"] = float(rose)

    @torch.no_grad()
    def validation_loss(self, trainer) -> float:
        """`ce`: the student's CE on the dev responses, the mean of per-batch means (batches of val_batch), as
        the released code averages it; `kd`: the plain base divergence to the teacher, token-weighted."""
        if not self.dev:
            raise ValueError("distillm needs a dev split for its validation loss (dataset has none)")
        kd = self.val_loss_kind == "kd"
        student = self.student
        was_training = student.training
        student.eval()
        try:
            losses = dev_losses(student, self.teacher if kd else None,
                                build_divergence(self.divergence, **self.div_params) if kd else None, self.dev,
                                pad_id=self.pad_id, device=trainer.device,
                                teacher_device=getattr(trainer, "teacher_device", trainer.device),
                                autocast=trainer._autocast, batch_size=self.val_batch, chunk_size=self.chunk_size)
        finally:
            student.train(was_training)
        if kd:
            return losses["kd_sum"] / losses["tokens"] if losses["tokens"] else math.nan
        return sum(losses["batch_ce"]) / len(losses["batch_ce"]) if losses["batch_ce"] else math.nan

    def close(self) -> None:
        if self.policy_engine is not None:
            self.policy_engine.close()

    # -- state and logs --------------------------------------------------------------------------------
    def step_stats(self, trainer) -> dict[str, float]:
        st = dict(self._step_stats)
        n = st.pop("micro_batches", 0.0)
        out: dict[str, float] = {"prob": self.schedule.p, "buffer": float(len(self.buffer))}
        if n:
            out.update(fresh_frac=st.get("fresh", 0.0) / n, replay_frac=st.get("replay", 0.0) / n)
        for k in ("val_loss_init", "val_loss", "prob_rose"):
            if k in st:
                out[k] = st[k]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": self.schedule.state_dict(), "buffer": self.buffer.state_dict(),
                "generator": self.generator.get_state(), "replay_generator": self.replay_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.replay_generator.set_state(state["replay_generator"])
