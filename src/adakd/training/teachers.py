"""Where the teacher side of the KD loss comes from, for one micro-batch (kd.objective.inputs):

- `LiveTeacher`: the frozen teacher model, run under no_grad at the response positions; it gives logits
  [1, N, V] or, for the fused loss, `HiddenStates` (hidden states and its LM head);
- `CachedTeacher`: the teacher's top-k log-probabilities read from a `TeacherCache` (off-policy data
  only), as a `TeacherTopK` [1, N].

Both offer `rows(batch, mask, device)` and, where it exists, `hidden_states(batch, mask, device)`; `vocab`
is the vocabulary the student's logits are cut to before the loss (None: the objective aligns them).
"""
from __future__ import annotations

from typing import Callable, ContextManager, Dict, Optional, Union

import torch
from torch import Tensor, nn

from ..kd.losses.sparse import TeacherTopK
from ..kd.objective import HiddenStates
from ..models import lm_parts
from .forward import head_logits, hidden_at
from .topk_cache import TeacherCache

Autocast = Callable[[torch.device], ContextManager]
Batch = Dict[str, Tensor]


def device_of(model: nn.Module, default: torch.device) -> torch.device:
    p = next(iter(model.parameters()), None)
    return default if p is None else p.device


class LiveTeacher:
    """The teacher model itself (frozen, eval mode), possibly on another device than the student."""

    vocab: Optional[int] = None
    has_hidden = True

    def __init__(self, model: nn.Module, default_device: torch.device, autocast: Autocast):
        self.model = model
        self.device = device_of(model, default_device)   # model.teacher.device may put it elsewhere
        self.autocast = autocast

    def hidden(self, batch: Batch, mask: Tensor, student_device: torch.device) -> Tensor:
        """[N, H] final hidden states at the response positions, on the teacher's device."""
        with torch.no_grad(), self.autocast(student_device), self.autocast(self.device):
            if self.device == student_device:
                return hidden_at(self.model, batch["input_ids"], batch["attention_mask"], mask)
            # the teacher lives on another device: send the batch there (results come back below)
            return hidden_at(self.model, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                             mask.to(self.device))

    def rows(self, batch: Batch, mask: Tensor, student_device: torch.device) -> Tensor:
        h_t = self.hidden(batch, mask, student_device)
        with torch.no_grad(), self.autocast(self.device):
            return head_logits(self.model, h_t).to(student_device)[None]

    def hidden_states(self, batch: Batch, mask: Tensor, student_device: torch.device) -> HiddenStates:
        h_t = self.hidden(batch, mask, student_device)
        head = lm_parts(self.model)[1]
        bias = getattr(head, "bias", None)
        # hidden rows in the head's dtype (a bf16 teacher on GPU): F.linear needs one dtype
        return HiddenStates(h_t.to(student_device, head.weight.dtype)[None], head.weight.to(student_device),
                            None if bias is None else bias.to(student_device))


class CachedTeacher:
    """The teacher's top-k log-probabilities from disk: no teacher forward at all."""

    has_hidden = False
    model = None

    def __init__(self, cache: TeacherCache):
        self.cache = cache
        self.vocab = cache.vocab   # the shared vocabulary the cache was built on

    def rows(self, batch: Batch, mask: Tensor, student_device: torch.device) -> TeacherTopK:
        top = self.cache.rows_for_batch(batch)
        n = int(mask.sum())
        if top.shape[0] != n:
            raise RuntimeError(f"teacher cache rows ({top.shape[0]}) != response tokens ({n})")
        return top.to(student_device).unsqueeze(0)


TeacherSource = Union[LiveTeacher, CachedTeacher]
