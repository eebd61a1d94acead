"""From two verdicts per pair to win / tie / loss, and the statistics of a comparison.

The swap rule (the authors' protocol): each pair is judged in both orders, run A's answer first, then run B's
answer first. An outcome from run A's side counts only when both orders agree on it; orders that disagree
are a tie ("inconsistent"). A pair with a failed order -- an API failure or an unparseable verdict -- has no
outcome: it is counted as a failure of its kind, never as a tie, and left out of the rates.

Rates are over the pairs judged (both orders parsed). Their confidence intervals are percentile bootstraps
over examples: the pairs of one example (its generation seeds) are resampled together, and the overall
interval resamples examples within each benchmark (stratified), so every benchmark keeps its weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

WIN, TIE, LOSS = "win", "tie", "loss"
OUTCOMES = (WIN, TIE, LOSS)
# a verdict in each order, from run A's side: order "ab" shows A's answer first, "ba" shows B's first
_SIDE = {"ab": {"A": WIN, "B": LOSS, "C": TIE}, "ba": {"A": LOSS, "B": WIN, "C": TIE}}


@dataclass(frozen=True)
class PairOutcome:
    outcome: Optional[str]          # win | tie | loss from run A's side; None when an order failed
    consistent: Optional[bool]      # both orders gave the same outcome (None when an order failed)
    failure: str = ""               # "", "api" or "parse" (api wins when both happened)


def combine(ab: Optional[str], ba: Optional[str], failures: Tuple[str, str] = ("", "")) -> PairOutcome:
    """The swap rule. ab / ba: the verdict label ("A", "B", "C") of each order, None where it failed;
    failures: each order's failure kind ("api", "parse" or "")."""
    if ab is None or ba is None:
        kinds = set(failures) - {""}
        return PairOutcome(None, None, "api" if "api" in kinds else "parse")
    first, second = _SIDE["ab"][ab], _SIDE["ba"][ba]
    if first == second:
        return PairOutcome(first, True)
    return PairOutcome(TIE, False)


@dataclass
class Summary:
    pairs: int = 0                  # pairs asked about
    judged: int = 0                 # both orders parsed
    counts: Dict[str, int] = field(default_factory=lambda: {o: 0 for o in OUTCOMES})
    consistent: int = 0             # judged pairs whose two orders agree
    failed_pairs: Dict[str, int] = field(default_factory=lambda: {"api": 0, "parse": 0})
    failed_requests: Dict[str, int] = field(default_factory=lambda: {"api": 0, "parse": 0})
    first_position: int = 0         # parsed A/B verdicts naming the answer shown first (position bias)
    decisive: int = 0               # parsed A/B verdicts (not C)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ci: Dict[str, Tuple[float, float]] = field(default_factory=dict)

    def rate(self, outcome: str) -> Optional[float]:
        return self.counts[outcome] / self.judged if self.judged else None

    @property
    def consistency(self) -> Optional[float]:
        return self.consistent / self.judged if self.judged else None

    @property
    def first_position_rate(self) -> Optional[float]:
        return self.first_position / self.decisive if self.decisive else None

    def as_dict(self) -> Dict:
        return {"pairs": self.pairs, "judged": self.judged, "counts": dict(self.counts),
                "rates": {o: self.rate(o) for o in OUTCOMES}, "ci": {k: list(v) for k, v in self.ci.items()},
                "consistent": self.consistent, "consistency": self.consistency,
                "failed_pairs": dict(self.failed_pairs), "failed_requests": dict(self.failed_requests),
                "first_position": self.first_position, "decisive": self.decisive,
                "first_position_rate": self.first_position_rate,
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens}}


def summarise(rows: Sequence[Dict]) -> Summary:
    """Counts over judged pair rows (adakd.judge.judging.pair_rows: outcome, consistent, failure, verdicts,
    request failures, tokens)."""
    s = Summary()
    for r in rows:
        s.pairs += 1
        for label in r["verdicts"].values():
            if label in ("A", "B"):
                s.decisive += 1
                s.first_position += label == "A"
        for kind in r["request_failures"].values():
            if kind:
                s.failed_requests[kind] += 1
        s.prompt_tokens += r["tokens"]["prompt"]
        s.completion_tokens += r["tokens"]["completion"]
        if r["outcome"] is None:
            s.failed_pairs[r["failure"]] += 1
            continue
        s.judged += 1
        s.counts[r["outcome"]] += 1
        s.consistent += bool(r["consistent"])
    return s


def example_counts(rows: Sequence[Dict]) -> Tuple[List[str], np.ndarray]:
    """Per example (benchmark, id), in first-seen order: its judged pairs' [win, tie, loss] counts."""
    index: Dict[Tuple[str, str], int] = {}
    counts: List[List[int]] = []
    for r in rows:
        key = (r["benchmark"], r["id"])
        if key not in index:
            index[key] = len(counts)
            counts.append([0, 0, 0])
        if r["outcome"] is not None:
            counts[index[key]][OUTCOMES.index(r["outcome"])] += 1
    return [k[0] for k in index], np.asarray(counts, dtype=np.int64).reshape(-1, 3)


def bootstrap_ci(strata: Sequence[str], counts: np.ndarray, n_boot: int, seed: int,
                 confidence: float) -> Dict[str, Tuple[float, float]]:
    """Percentile intervals of the win / tie / loss rates, resampling examples with replacement within each
    stratum (benchmark). Resamples with no judged pair are left out; no judged pair at all -> no interval."""
    if n_boot <= 0 or counts.size == 0 or counts.sum() == 0:
        return {}
    rng = np.random.default_rng(seed)
    labels = np.asarray(strata)
    total = np.zeros((n_boot, 3), dtype=np.int64)
    for s in dict.fromkeys(strata):
        members = counts[labels == s]
        idx = rng.integers(0, len(members), size=(n_boot, len(members)))
        total += members[idx].sum(axis=1)
    n = total.sum(axis=1)
    ok = n > 0
    rates = total[ok] / n[ok, None]
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    return {o: (float(np.percentile(rates[:, i], lo)), float(np.percentile(rates[:, i], hi)))
            for i, o in enumerate(OUTCOMES)}


def score(rows: Sequence[Dict], n_boot: int, seed: int, confidence: float) -> Dict[str, Summary]:
    """{benchmark: Summary, ..., "overall": Summary}, each with its bootstrap intervals."""
    out: Dict[str, Summary] = {}
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    for i, b in enumerate(benches):
        sub = [r for r in rows if r["benchmark"] == b]
        out[b] = summarise(sub)
        strata, counts = example_counts(sub)
        out[b].ci = bootstrap_ci(strata, counts, n_boot, seed + i, confidence)
    out["overall"] = summarise(rows)
    strata, counts = example_counts(rows)
    out["overall"].ci = bootstrap_ci(strata, counts, n_boot, seed + len(benches), confidence)
    return out
