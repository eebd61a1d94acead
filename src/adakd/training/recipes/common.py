"""What the data recipes share: prompts of a batch, sampling responses with the project's sampler, and
turning (prompt, response) token ids back into a training micro-batch.

A training micro-batch (adakd.data.collate_train) is right-padded, with token-aligned labels: -100 on the
prompt and the padding, the target token on response tokens and the final EOS. The prompt of a row is
everything before its first label; sampled responses are laid out the same way, so the trainer, the
objective and AdaKD see generated batches exactly as they see dataset batches.
"""
from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...data.prompts import IGNORE_INDEX, collate_train
from ...evaluation.generation import example_seed, generate_from_ids, max_positions
from ...evaluation.vllm_engine import build_requests
from ...schema.recipes import REFRESH, SAMPLING, Param


_S = {k: p.default for k, p in SAMPLING.items()}   # the sampling defaults (adakd.schema.recipes)


def check_param(recipe: str, key: str, spec: Param, value: Any) -> None:
    """Raise ValueError when `value` is not valid for the parameter `spec` (adakd.schema.recipes): the same
    entry experiment.config_check reads, so an object built without a config is held to the same ranges."""
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{recipe}: {key} must be one of {spec.choices}, got {value!r}")
    if spec.range is not None and value is not None and value not in spec.range:
        raise ValueError(f"{recipe}: {key} must be in {spec.range.text(lambda b: f'{b:g}')}, got {value}")


@dataclass
class Sampling:
    """Sampling settings of a recipe."""
    temperature: float = _S["temperature"]
    top_k: int = _S["top_k"]
    top_p: float = _S["top_p"]
    max_new_tokens: int | None = _S["max_new_tokens"]
    batch_size: int = 16
    engine: str = "native"

    @classmethod
    def from_params(cls, p: dict[str, Any], default_batch: int, default_engine: str = "native") -> "Sampling":
        """From a recipe's parameters; gen_batch_size None means `default_batch`, engine None `default_engine`."""
        return cls(temperature=float(p["temperature"]), top_k=int(p["top_k"]), top_p=float(p["top_p"]),
                   max_new_tokens=None if p["max_new_tokens"] is None else int(p["max_new_tokens"]),
                   batch_size=int(p["gen_batch_size"] or default_batch),
                   engine=str(p.get("engine") or default_engine))

    def record(self) -> dict[str, Any]:
        rec = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
               "max_new_tokens": self.max_new_tokens}
        if self.engine != "native":   # other draws: another cache key (native keeps the keys it always had)
            rec["engine"] = self.engine
        return rec


def split_batch(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int], list[int]]]:
    """Per row: (prompt ids, full input ids, labels) without padding."""
    out = []
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :n].tolist()
        labels = batch["labels"][row, :n].tolist()
        first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), n)
        out.append((ids[:first], ids, labels))
    return out


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    return [p for p, _, _ in split_batch(batch)]


def prompt_of_example(example: dict[str, list[int]]) -> list[int]:
    labels = example["labels"]
    first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))
    return list(example["input_ids"][:first])


class PolicyEngine:
    """A vLLM engine sampling for a model that changes (the student being trained), started at its first use: the
    model's weights are copied into it before the first sampling call and then every `refresh_every` calls. What
    the refreshes cost is in `engine.stats` (refreshes, refresh_seconds)."""

    def __init__(self, open_engine: Callable[[], Any], refresh_every: int = 1):
        check_param("policy engine", "refresh_every", REFRESH["refresh_every"], int(refresh_every))
        self._open, self.refresh_every, self.calls = open_engine, int(refresh_every), 0
        self.engine: Any = None

    def for_model(self, model: Any, *, current: bool = False) -> Any:
        """The engine, its weights refreshed from `model` on the cadence (sampling calls), or now when `current`
        (dev validation samples the student as it is; such calls leave the cadence alone)."""
        if self.engine is None:
            self.engine = self._open()
        if current or self.calls % self.refresh_every == 0:
            self.engine.load_weights((k, v.detach()) for k, v in model.state_dict().items())
        if not current:
            self.calls += 1
        return self.engine

    def stats(self) -> dict[str, Any]:
        return self.engine.stats.record() if self.engine is not None else {}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def sample_responses(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], keys: Sequence[str], *,
                     seed: int, sampling: Sampling, max_len: int, progress: bool = False,
                     engine: Any = None) -> list[list[int]]:
    """One sampled response per prompt with the per-example streams of adakd.evaluation.generation: tokens, plus EOS
    when the model stopped by itself; cut to max_len - len(prompt) (a cut response has no EOS, as
    dataset.overlong=truncate does). Each response has at least one token. `engine`: a vLLM engine holding the
    model's weights (the same requests, seeds and room; adakd.evaluation.vllm_engine), None for the native
    sampler."""
    if not prompts:
        return []
    caps = [max_len - len(p) for p in prompts]
    if min(caps) < 1:
        raise ValueError(f"a prompt of {max(map(len, prompts))} tokens leaves no room under max_len={max_len}")
    budget = max(caps)
    if sampling.max_new_tokens is not None:
        budget = min(budget, int(sampling.max_new_tokens))
    limit = max_positions(model)
    if limit is not None:   # the sampler would cut silently otherwise, and "stopped" would be misread
        budget = min(budget, limit - max(map(len, prompts)))
    budget = max(budget, 1)
    if engine is None:
        raw = generate_from_ids(model, tokenizer, [list(p) for p in prompts], list(keys), seed=seed,
                                max_new_tokens=budget, temperature=sampling.temperature, top_k=sampling.top_k,
                                top_p=sampling.top_p, batch_size=sampling.batch_size, progress=progress)
    else:
        requests = build_requests([list(p) for p in prompts], list(keys), seed=seed, max_new_tokens=budget,
                                  limit=limit)
        raw = engine.generate(requests, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    eos = tokenizer.eos_token_id
    out = []
    for toks, cap in zip(raw, caps):
        stopped = len(toks) < budget          # the sampler drops the EOS it emitted; full length = no EOS
        resp = list(toks) + ([eos] if stopped else [])
        out.append(resp[:cap])
    return out


def to_examples(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(p) + list(r), "labels": [IGNORE_INDEX] * len(p) + list(r)}
            for p, r in zip(prompts, responses)]


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    return collate_train(list(examples), pad_id)


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def uniform(generator: torch.Generator) -> float:
    """One U[0, 1) draw from a recipe's own generator (never the global RNG)."""
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def seeded_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(example_seed(seed, name))
