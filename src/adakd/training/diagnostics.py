"""What to say when the loss or the gradients become NaN / inf: where (step, examples, tokens) and which
values are not finite. A diagnostic must never hide the error it describes, so each part is guarded."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..kd.losses import per_token
from .forward import head_logits, hidden_at, response_positions


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients became NaN/inf; the message says where."""


def short(items: Sequence[Any], n: int = 8) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as e:   # noqa: BLE001 - a diagnostic must never hide the error it describes
        return f"(diagnostic failed: {type(e).__name__}: {e})"


def bad_rows(what: str, bad: torch.Tensor, where: List[List[int]], targets: List[int],
             values: Optional[torch.Tensor] = None) -> str:
    idx = bad.nonzero().flatten().tolist()
    if not idx:
        return f"{what}: all finite"
    shown = [f"(row {where[i][0]}, pos {where[i][1] + 1}, token {targets[i]}"
             + (f", value {float(values[i])}" if values is not None else "") + ")" for i in idx[:5]]
    return f"{what}: non-finite at {len(idx)} of {len(targets)} tokens: {', '.join(shown)}"


@torch.no_grad()
def token_diagnostic(student: nn.Module, teacher: Optional[nn.Module], batch: Dict[str, torch.Tensor],
                     device: torch.device, teacher_device: torch.device, divergence: Optional[str],
                     params: Dict[str, Any]) -> str:
    """Which response tokens carry non-finite logits or a non-finite per-token `divergence` (with `params`)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    targets, mask = response_positions(batch["labels"])
    where = mask.nonzero().tolist()   # [row, position] of each response token, in the order of the rows
    tgt = targets[mask].tolist()
    s = head_logits(student, hidden_at(student, batch["input_ids"], batch["attention_mask"], mask))
    parts = [bad_rows("student logits", ~torch.isfinite(s.float()).all(-1), where, tgt)]
    if teacher is not None:
        tdev = teacher_device
        h_t = hidden_at(teacher, batch["input_ids"].to(tdev), batch["attention_mask"].to(tdev), mask.to(tdev))
        t = head_logits(teacher, h_t).to(s.device)
        parts.append(bad_rows("teacher logits", ~torch.isfinite(t.float()).all(-1), where, tgt))
        if divergence and divergence != "none":
            v = min(s.shape[-1], t.shape[-1])
            d = per_token(divergence, s[:, :v].float(), t[:, :v].float(), **params)
            parts.append(bad_rows(f"per-token {divergence}", ~torch.isfinite(d), where, tgt, d))
    return "; ".join(parts)


def grad_diagnostic(student: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    names = {id(p): n for n, p in student.named_parameters()}
    bad = [names.get(id(p), "objective parameter") for g in optimizer.param_groups for p in g["params"]
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    return f"parameters with non-finite gradients: {len(bad)} ({short(bad)})"
