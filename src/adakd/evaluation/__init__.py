"""Evaluation: the batched sampler (generation), ROUGE-L (rouge) and the protocol over benchmarks and
seeds (evaluate)."""
from .evaluate import evaluate_model, protocol_record
from .generation import example_seed, generate, generate_from_ids, generate_ids
from .rouge import rouge_l, rouge_l_scores

__all__ = ["evaluate_model", "example_seed", "generate", "generate_from_ids", "generate_ids", "protocol_record",
           "rouge_l", "rouge_l_scores"]
