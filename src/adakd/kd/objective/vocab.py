"""Teacher and student must share one vocabulary; embedding matrices may be padded differently.

`shared_vocab` gives the size of the common part (refusing sizes that differ by more than padding),
`align_vocab` cuts both logits to it, e.g. 151936 vs 152064 -> 151936.
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

DEFAULT_MAX_VOCAB_PAD = 1024


def shared_vocab(v_student: int, v_teacher: int, max_pad: int = DEFAULT_MAX_VOCAB_PAD) -> int:
    """Size of the shared vocabulary part; refuses sizes that differ by more than padding."""
    if abs(v_student - v_teacher) > max_pad:
        raise ValueError(
            f"student vocabulary has {v_student} entries and the teacher's {v_teacher}: they differ by more "
            f"than padding (max_pad={max_pad}). Distillation on logits needs the same tokenizer for teacher "
            "and student."
        )
    return min(v_student, v_teacher)


def align_vocab(
    student_logits: Tensor, teacher_logits: Tensor, *, max_pad: int = DEFAULT_MAX_VOCAB_PAD
) -> Tuple[Tensor, Tensor]:
    """Cut both logits to the shared (smaller) vocabulary, e.g. 151936 vs 152064 -> 151936 (views).

    The caller guarantees the same tokenizer; the extra entries are embedding-matrix padding.
    """
    v = shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], max_pad)
    return student_logits[..., :v], teacher_logits[..., :v]

