"""Asking the judge: two requests per pair (both orders), answered from the cache when possible, the rest
sent `concurrency` at a time; then one row per pair with its verdicts and its swap-rule outcome.

Each answer is written to the cache the moment it arrives (from this thread alone: one writer), so a killed
judging loses only the requests in flight. `max_consecutive_failures` failed requests in a row stop the
command with the last error (a server that died mid-way), instead of counting every remaining pair as failed.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from tqdm.auto import tqdm

from ..errors import UserError
from ..schema.judge import JudgeConfig
from .cache import JudgmentCache, request_key
from .client import ApiFailure, JudgeClient
from .prompts import Template, messages, parse_verdict, request_body
from .runs import Pair
from .scoring import combine

ORDERS = ("ab", "ba")     # ab: side A's answer shown as "A"; ba: side B's answer shown as "A"


class JudgingStopped(UserError):
    """Too many requests failed in a row: the server is down or overloaded."""


@dataclass(frozen=True)
class Request:
    pair: int                 # index into the pairs
    order: str
    key: str
    body: Dict[str, Any]


@dataclass
class Tally:
    total: int = 0            # requests the comparison needs (2 per pair)
    cached: int = 0           # answered from the cache
    asked: int = 0            # sent in this invocation
    answered: int = 0
    failed: int = 0
    prompt_tokens: int = 0    # spent in this invocation
    completion_tokens: int = 0
    failures: Dict[str, str] = field(default_factory=dict)   # key -> last error of a failed request

    def as_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["failures"] = len(self.failures)
        return d


def request_settings(cfg: JudgeConfig, model: str, template: Template) -> Dict[str, Any]:
    """Everything besides the texts that decides an answer (part of the cache key)."""
    return {"model": model, "template": template.digest, "api": cfg.api,
            "prompt_format": cfg.prompt_format if cfg.api == "completions" else None,
            "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}


def build_requests(pairs: Sequence[Pair], cfg: JudgeConfig, model: str, template: Template) -> List[Request]:
    settings = request_settings(cfg, model, template)
    sampling: Dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    if cfg.seed is not None:
        sampling["seed"] = cfg.seed
    out = []
    for i, p in enumerate(pairs):
        for order in ORDERS:
            first, second = (p.answer_a, p.answer_b) if order == "ab" else (p.answer_b, p.answer_a)
            msgs = messages(template, p.instruction, p.reference, first, second)
            out.append(Request(i, order, request_key(settings, p.instruction, p.reference, first, second),
                               {**request_body(cfg.api, msgs, cfg.prompt_format), **sampling}))
    return out


def ask(requests: Sequence[Request], client: JudgeClient, cache: JudgmentCache, cfg: JudgeConfig) -> Tally:
    """Answer every request: from the cache, else from the server (answers go to the cache at once)."""
    tally = Tally(total=len(requests))
    todo: Dict[str, Request] = {}
    for r in requests:
        if cache.get(r.key) is not None:
            tally.cached += 1
        else:
            todo.setdefault(r.key, r)     # identical texts in two pairs: asked once
    bar = tqdm(total=len(todo), desc="judge", disable=not cfg.progress, unit="req")
    in_a_row = 0
    pool = cf.ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="judge")
    try:
        futures = {pool.submit(client.complete, r.body): r for r in todo.values()}
        tally.asked = len(futures)
        pending = set(futures)
        while pending:
            # a timeout, so that Ctrl-C and SIGTERM are handled between answers
            done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                r = futures[fut]
                try:
                    reply = fut.result()
                except ApiFailure as e:
                    tally.failed += 1
                    tally.failures[r.key] = str(e)
                    in_a_row += 1
                    if cfg.max_consecutive_failures and in_a_row >= cfg.max_consecutive_failures:
                        raise JudgingStopped(
                            f"{in_a_row} judge requests failed in a row (last: {e}): the server looks down or "
                            f"overloaded. The {tally.answered} answers received are cached: run the same command "
                            "again to go on (raise judge.timeout or lower judge.concurrency for a slow server)") from None
                else:
                    in_a_row = 0
                    tally.answered += 1
                    tally.prompt_tokens += reply.prompt_tokens
                    tally.completion_tokens += reply.completion_tokens
                    cache.put({"key": r.key, "model": client.model, "order": r.order, "text": reply.text,
                               "finish_reason": reply.finish_reason,
                               "usage": {"prompt": reply.prompt_tokens, "completion": reply.completion_tokens}})
                bar.update(1)
                bar.set_postfix(done=tally.answered, failed=tally.failed,
                                tokens=tally.prompt_tokens + tally.completion_tokens, refresh=False)
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
    return tally


def pair_rows(pairs: Sequence[Pair], requests: Sequence[Request], cache: JudgmentCache,
              failures: Dict[str, str]) -> List[Dict[str, Any]]:
    """One row per pair: each order's verdict (or why there is none), the outcome by the swap rule."""
    by_pair: Dict[int, Dict[str, Request]] = {}
    for r in requests:
        by_pair.setdefault(r.pair, {})[r.order] = r
    rows = []
    for i, p in enumerate(pairs):
        verdicts: Dict[str, Any] = {}
        kinds: Dict[str, str] = {}
        problems: Dict[str, str] = {}
        texts: Dict[str, Any] = {}
        tokens = {"prompt": 0, "completion": 0}
        for order in ORDERS:
            r = by_pair[i][order]
            hit = cache.get(r.key)
            if hit is None:
                verdicts[order], kinds[order] = None, "api"
                problems[order] = failures.get(r.key, "not answered")
                texts[order] = None
                continue
            v = parse_verdict(hit["text"])
            verdicts[order], kinds[order], problems[order] = v.label, ("" if v.label else "parse"), v.problem
            texts[order] = hit["text"]
            tokens["prompt"] += int(hit["usage"]["prompt"])
            tokens["completion"] += int(hit["usage"]["completion"])
        o = combine(verdicts["ab"], verdicts["ba"], (kinds["ab"], kinds["ba"]))
        rows.append({"benchmark": p.benchmark, "id": p.id, "seed": p.seed, "outcome": o.outcome,
                     "consistent": o.consistent, "failure": o.failure, "verdicts": verdicts,
                     "request_failures": kinds, "problems": problems, "tokens": tokens, "texts": texts})
    return rows
