"""GKD (Agarwal et al. 2024, "On-policy distillation of language models"): with probability lambda a
training micro-batch is replaced by responses the CURRENT student samples for the same prompts.

- The decision is made once per micro-batch with the recipe's own torch.Generator, one per rank (seeded from
  train.seed and the rank, as the released code seeds each rank with seed + rank; its state is in the
  checkpoints), never the global RNG.
- The samples come from adakd.evaluation.generation (batched, KV-cached, one random stream per example): the stream
  of row j of the c-th micro-batch this process has seen is (train.seed, "gkd:r<rank>:c<c>:<j>"), so a
  sample can be regenerated exactly (tests do) and a resumed run draws the same samples.
- Labels are the sampled tokens (+ EOS when the student stopped by itself), -100 on the prompt; responses
  are cut at dataset.max_len (a cut response has no EOS).
- The token loss is the method's (jsd, its default beta = 0.1; conf/method/gkd.yaml) wrapped by AdaKD when
  adakd=full: the data source stays GKD's, the loss becomes AdaKD's (docs/method.md section 5).

The samples are trained on directly, as the AdaKD authors' code runs GKD (and as the GKD paper describes);
DistiLLM's own code ("mixed-jsd") pushes them into its replay buffer and trains on a random buffer batch.
"""
from __future__ import annotations

from typing import Any

import torch

from ...schema.recipes import GKD
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


class GKDSource(BatchSource):
    name = "gkd"

    def __init__(self, *, student, tokenizer, seed: int, lam: float = GKD["lambda"].default,
                 sampling: Sampling | None = None, max_len: int = 512, run_dir=None, rank: int = 0, policy_engine: PolicyEngine | None = None):
        super().__init__(run_dir=run_dir, rank=rank)
        self.policy_engine = policy_engine       # vLLM sampling (sampling.engine=vllm), else the native sampler
        check_param("gkd", "lambda", GKD["lambda"], lam)
        self.student, self.tokenizer = student, tokenizer
        self.seed, self.lam = int(seed), float(lam)
        self.sampling = sampling or Sampling()
        self.max_len = int(max_len)
        self.generator = seeded_generator(self.seed, f"gkd-decisions:r{rank}")   # ranks decide independently
        self.pad_id = pad_id_of(tokenizer)
        self.last_keys: list[str] = []           # the streams of the last on-policy micro-batch (tests)
        self.last_prompts: list[list[int]] = []
        self.n_onpolicy = 0

    def keys_for(self, call: int, n: int) -> list[str]:
        return [f"gkd:r{self.rank}:c{call}:{j}" for j in range(n)]

    def next_batch(self, batch: dict[str, torch.Tensor], trainer) -> dict[str, torch.Tensor]:
        self.count("micro_batches")
        if uniform(self.generator) >= self.lam:
            self.last_keys, self.last_prompts = [], []
            return batch
        prompts = prompts_of(batch)
        keys = self.keys_for(self.calls, len(prompts))
        engine = self.policy_engine.for_model(self.student) if self.policy_engine is not None else None
        responses = sample_responses(self.student, self.tokenizer, prompts, keys, seed=self.seed,
                                     sampling=self.sampling, max_len=self.max_len, engine=engine)
        self.last_keys, self.last_prompts = keys, prompts
        self.n_onpolicy += 1
        self.count("on_policy")
        self.count("sampled_tokens", float(sum(len(r) for r in responses)))
        return collate(to_examples(prompts, responses), self.pad_id)

    def step_stats(self, trainer) -> dict[str, float]:
        st = dict(self._step_stats)
        n = st.pop("micro_batches", 0.0)
        if not n:
            return {}
        return {"on_policy_frac": st.get("on_policy", 0.0) / n, "sampled_tokens": st.get("sampled_tokens", 0.0)}

    def close(self) -> None:
        if self.policy_engine is not None:
            self.policy_engine.close()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state(), "n_onpolicy": self.n_onpolicy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        self.n_onpolicy = int(state.get("n_onpolicy", 0))
