"""Stable public name (the project's contract): `adakd.evaluate.rouge_l`.

Evaluation lives in adakd.evaluation (generation, rouge, evaluate).
"""
from .evaluation.evaluate import evaluate_model
from .evaluation.rouge import rouge_l, rouge_l_scores

__all__ = ["evaluate_model", "rouge_l", "rouge_l_scores"]
