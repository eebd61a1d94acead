"""ROUGE-L as the MiniLLM line of work scores it (docs/method.md section 6): `rouge_score` ROUGE-L F-measure with
the Porter stemmer, the max over a sample's references, the mean over samples, x100."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from rouge_score import rouge_scorer

References = Union[Sequence[str], Sequence[Sequence[str]]]  # noqa: UP007 (a runtime alias)
_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:   # building it loads the stemmer: once per process is enough
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


def rouge_l_scores(predictions: Sequence[str], references: References) -> list[float]:
    """Per-sample ROUGE-L F (x100), each the max over that sample's references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = _scorer()
    scores = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"sample {i} has no reference")
        scores.append(100.0 * max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs))
    return scores


def rouge_l(predictions: Sequence[str], references: References) -> float:
    """Mean over samples of the max-over-references ROUGE-L F-measure, x100."""
    scores = rouge_l_scores(predictions, references)
    if not scores:
        raise ValueError("no predictions to score")
    return sum(scores) / len(scores)
