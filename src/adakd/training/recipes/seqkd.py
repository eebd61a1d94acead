"""SeqKD (Kim & Rush 2016; the MiniLLM/DistiLLM baseline): the student trains on responses the teacher
generated for the training prompts, instead of the dataset's responses.

- The responses are generated once and cached on disk under <output_root>/cache/seqkd/<key>/, the key
  being a hash of the teacher (assemble.identity.teacher_key), the training prompts' token ids,
  dataset.max_len and the generation settings (sampling, seed). Every later run (any method on top, any
  train.seed, a sweep) reuses them.
- Each prompt's random stream is (recipe_params.seed, "seqkd:<hash of its prompt ids>:<occurrence>"), so
  a sample does not depend on the dataset order or the batch it was generated in.
- Loss: `method=seqkd` trains forward KL on the teacher's responses with kd_ratio 1 (DistiLLM's SeqKD baseline
  script; AdaKD wraps it when on, and the teacher cache (train.teacher_cache) may serve the teacher's side,
  since these data are off-policy); `method=seqkd-ce` is the classic SeqKD, cross-entropy alone (kd_ratio 0).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ... import runinfo
from ...io import atomic_write_json, atomic_write_text, build_lock
from ...schema.recipes import SEQKD
from ..distributed import barrier, info
from .base import BatchSource
from .common import Sampling, prompt_of_example, sample_responses, to_examples

log = logging.getLogger(__name__)


def _digest(ids: Sequence[int]) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def stream_keys(prompts: Sequence[Sequence[int]]) -> list[str]:
    seen: dict[str, int] = {}
    keys = []
    for p in prompts:
        d = _digest(p)
        keys.append(f"seqkd:{d}:{seen.get(d, 0)}")
        seen[d] = seen.get(d, 0) + 1
    return keys


class SeqKDSource(BatchSource):
    name = "seqkd"

    def __init__(self, *, teacher, tokenizer, cache_root: Path, teacher_key: str, sampling: Sampling,
                 seed: int = SEQKD["seed"].default, max_len: int = 512, run_dir=None, rank: int = 0, progress: bool = True,
                 open_engine=None):
        super().__init__(run_dir=run_dir, rank=rank)
        # sampling.engine=vllm: a callable starting a vLLM engine on the teacher, called only when the cache is
        # missing (None: the native sampler)
        self.open_engine = open_engine
        self.teacher, self.tokenizer = teacher, tokenizer
        self.cache_root, self.teacher_key = Path(cache_root), teacher_key
        self.sampling, self.seed, self.max_len = sampling, int(seed), int(max_len)
        self.progress = progress
        self.cache_dir: Path | None = None
        self.generated_now = False
        self.engine_stats: dict[str, Any] = {}

    def cache_key(self, prompts: Sequence[Sequence[int]]) -> str:
        h = hashlib.sha256()
        for p in prompts:
            h.update((",".join(map(str, p)) + ";").encode())
        return runinfo.config_hash({"teacher": self.teacher_key, "prompts": h.hexdigest(), "seed": self.seed,
                                    "max_len": self.max_len, "sampling": self.sampling.record(),
                                    "eos": self.tokenizer.eos_token_id})

    def train_data(self, encoded: Sequence[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
        """The training examples with the teacher's responses in place of the dataset's (cached)."""
        prompts = [prompt_of_example(e) for e in encoded]
        self.cache_dir = self.cache_root / self.cache_key(prompts)
        path = self.cache_dir / "responses.jsonl"
        if not path.exists() and info().is_main:
            with build_lock(self.cache_dir, "SeqKD teacher-samples cache"):
                if not path.exists():   # another process may have written it meanwhile
                    self._generate_into(prompts, path)
        barrier()
        responses = [json.loads(line) for line in path.read_text().splitlines()]
        if len(responses) != len(prompts):
            raise ValueError(f"{path}: {len(responses)} responses for {len(prompts)} prompts (a stale cache?)")
        return to_examples(prompts, responses)

    def _generate_into(self, prompts: Sequence[Sequence[int]], path: Path) -> None:
        """The teacher samples every response once and the cache is written, responses.jsonl last."""
        t0 = time.time()
        log.info("seqkd: the teacher generates %d responses (cached in %s)", len(prompts), self.cache_dir)
        engine = self.open_engine() if self.open_engine is not None else None
        try:
            responses = sample_responses(self.teacher, self.tokenizer, prompts, stream_keys(prompts),
                                         seed=self.seed, sampling=self.sampling, max_len=self.max_len,
                                         progress=self.progress, engine=engine)
        finally:
            if engine is not None:
                self.engine_stats = engine.stats.record()
                engine.close()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.cache_dir / "meta.json", {
            "teacher": self.teacher_key, "n": len(prompts), "seed": self.seed, "max_len": self.max_len,
            "sampling": self.sampling.record(), "seconds": round(time.time() - t0, 2),
            "tokens": sum(map(len, responses))})
        # written last (atomically): its presence means the cache is complete
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in responses))
        self.generated_now = True

    def step_stats(self, trainer) -> dict[str, Any]:
        return {}


__all__ = ["SeqKDSource", "stream_keys"]
