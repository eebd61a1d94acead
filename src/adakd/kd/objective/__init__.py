"""The KD objective: valid tokens -> LATF selection -> IDTS temperatures -> divergence x tau^2 -> mean.

Reading order: `inputs` (what goes in), `pipeline` (the AdaKD steps, shared by every implementation),
`rows` (where rows of logits come from), `token_values` (the per-token value and its gradient),
`chunked` (the memory-bounded autograd function on logits), `fused` (the same from hidden states, with
`logit_cache`: its pass-1 cache and memory floor), `objective` (the stateful `KDObjective` the trainer
uses, built from the typed config) and `functional` (the stateless `adakd_loss`).

Three implementations, equal in values and gradients (tests pin it):
- "reference": gathers and materialises everything; the oracle, kept obviously right.
- "chunked":   tokens in chunks of `chunk_size`: scoring, the loss and its gradient are computed one
               chunk at a time, so only O(chunk x V) temporaries exist besides the gradient buffer.
- "fused":     from hidden states and LM-head weights: pass 1 scores chunks without gradient (keeping the
               hardest tokens' logits within a budget derived from the memory floor), pass 2 takes the
               kept tokens' logits from that cache or recomputes them chunk by chunk and accumulates
               dL/dhidden, dL/dW, dL/db directly; the [N, V] logits never exist (within twice the floor:
               dL/dW + dL/dhidden + a chunk of logits per role).
"""
from .functional import adakd_loss
from .inputs import IMPLS, HiddenStates
from .objective import KDObjective, build_objective
from .pipeline import IGNORE_INDEX, STAT_KEYS, select_tokens
from .token_values import token_values
from .vocab import align_vocab, shared_vocab

__all__ = [
    "adakd_loss", "align_vocab", "build_objective", "HiddenStates", "IGNORE_INDEX", "IMPLS", "KDObjective",
    "select_tokens", "shared_vocab", "STAT_KEYS", "token_values",
]
