"""Does a sampler draw from the model's distribution? A check that needs no second sampler to compare with.

At every step of an exact sampler, the expected surprisal of the drawn token, -log p(x_t | history), equals the
entropy of that step's distribution. So for one answer, the sum over its steps of (surprisal - entropy) is a sum
of zero-mean increments (the stop decision included: EOS is one outcome of the step that drew it; an answer cut
at its room simply has no more steps), and over many independent answers its mean is 0 within its standard
error. A sampler that is too cold (a temperature below the one asked for, a truncation it should not apply)
draws likelier tokens than the model says: the mean is negative; too hot, positive. The statistic is
mean / standard error (z).

This tests the whole path a sample takes, the engine's model, its logits processing and its random draw, against
the reference model's probabilities. It is how the vLLM engine was checked against the project's model
(docs/generation.md), and the tests run it on both engines.

When several ids stop an answer the returned answer does not say which one did, so the EOS ids are merged into
one outcome: its probability is their sum.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def surprisal_gaps(model: Any, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                   eos_ids: set[int], caps: Sequence[int], temperature: float = 1.0,
                   batch_size: int = 16) -> list[float]:
    """Per answer: the sum over its steps of (surprisal - entropy) under softmax(logits / temperature) of `model`.

    `answers` are generated ids without the stop token (what both engines return); `caps[i]` is answer i's room,
    so an answer shorter than its cap ended with a stop token, which is scored, and one that reached it did not."""
    if not len(prompts) == len(answers) == len(caps):
        raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers, {len(caps)} caps")
    if temperature <= 0:
        raise ValueError("a greedy decoder has no distribution to check (temperature must be > 0)")
    eos = sorted(int(i) for i in eos_ids)
    stop = eos[0]   # stands for "one of the EOS ids" in the merged distribution
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        seqs, spans = [], []
        for i in rows:
            ans = [int(t) for t in answers[i]]
            if len(ans) > caps[i]:
                raise ValueError(f"answer {i} has {len(ans)} tokens, more than its room {caps[i]}")
            drawn = ans + ([stop] if len(ans) < caps[i] else [])
            seqs.append([int(t) for t in prompts[i]] + drawn)
            spans.append((len(prompts[i]), len(drawn)))
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):   # right padding: a row's real positions are 0.. whatever its neighbours
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.double() / temperature
        logp = logits.log_softmax(-1)
        for r, (p_len, n) in enumerate(spans):
            if n == 0:
                out.append(0.0)
                continue
            lp = logp[r, p_len - 1:p_len - 1 + n]                 # the distributions the n drawn tokens came from
            stop_lp = lp[:, eos].logsumexp(-1)                   # the merged stop outcome
            others = lp.clone()
            others[:, eos] = float("-inf")
            entropy = -(others.exp() * others.nan_to_num(neginf=0.0)).sum(-1) - stop_lp.exp() * stop_lp
            drawn = torch.tensor(seqs[r][p_len:p_len + n], device=lp.device)
            surprisal = -lp.gather(1, drawn[:, None]).squeeze(1)
            is_stop = torch.tensor([t in eos_ids for t in seqs[r][p_len:p_len + n]], device=lp.device)
            surprisal = torch.where(is_stop, -stop_lp, surprisal)
            out.append(float((surprisal - entropy).sum()))
    return out


def calibration(gaps: Sequence[float]) -> dict[str, float]:
    """mean, standard error and z = mean / se of the per-answer gaps (0 in expectation for an exact sampler)."""
    if len(gaps) < 2:
        raise ValueError("at least two answers are needed for a standard error")
    mean = statistics.fmean(gaps)
    se = statistics.stdev(gaps) / math.sqrt(len(gaps))
    return {"n": float(len(gaps)), "mean": mean, "se": se, "z": mean / se if se > 0 else 0.0}


__all__ = ["calibration", "surprisal_gaps"]
