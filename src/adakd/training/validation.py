"""Validation on the dev split during training: numbers that are comparable across methods and AdaKD settings.

The training loss of an AdaKD run is the mean of tau^2 * D over the kept tokens: it rises whenever LATF drops
easy tokens, so it is comparable neither with the plain row, nor with SFT, nor with itself across ratio
changes. Every `train.val_every` steps (and before the first) the student is measured on the dev split by
    val_ce       its cross-entropy on the reference responses (token-weighted mean), for every method;
    val_kd       the method's plain base divergence to the teacher over all response tokens at tau = 1 (no
                 selection, no temperatures: the same number for any AdaKD setting), where there is a teacher;
    val_rougeL   ROUGE-L of its generations on the first `train.val_samples` dev examples (the evaluation
                 protocol's sampling settings, one seed, per-example random streams as in evaluation).
Everything runs without gradient, in eval mode, and draws no global random numbers, so validating changes
nothing in the training run itself.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.example import Example
from ..data.prompts import apply_chat_template, collate_train
from ..evaluation.evaluate import sample_all_seeds
from ..evaluation.rouge import rouge_l_scores
from ..kd.losses import Divergence
from ..kd.objective import shared_vocab
from .forward import head_logits, hidden_at, response_positions

Autocast = Callable[[torch.device], ContextManager]


@torch.no_grad()
def dev_losses(student: nn.Module, teacher: Optional[nn.Module], divergence: Optional[Divergence],
               encoded: Sequence[dict], *, pad_id: int, device: torch.device, teacher_device: torch.device,
               autocast: Autocast, batch_size: int, chunk_size: int) -> Dict[str, Any]:
    """Per-batch sums and counts of the student's CE and (with a teacher) the base divergence on `encoded`.

    Returns {"ce_sum", "kd_sum", "tokens", "batch_ce"}: token-weighted means are sum / tokens; "batch_ce" are
    the per-batch mean CEs (what DistiLLM's released code averages)."""
    ce_sum, kd_sum, tokens, batch_ce = 0.0, 0.0, 0, []
    for i in range(0, len(encoded), batch_size):
        b = {k: v.to(device) for k, v in collate_train(list(encoded[i:i + batch_size]), pad_id).items()}
        targets, mask = response_positions(b["labels"])
        tgt = targets[mask]
        with autocast(device):
            h_s = hidden_at(student, b["input_ids"], b["attention_mask"], mask)
        h_t = None
        if teacher is not None and divergence is not None:
            with autocast(teacher_device):
                h_t = hidden_at(teacher, b["input_ids"].to(teacher_device), b["attention_mask"].to(teacher_device),
                                mask.to(teacher_device))
        b_ce = 0.0
        for lo in range(0, tgt.numel(), chunk_size):
            s = head_logits(student, h_s[lo:lo + chunk_size]).float()
            b_ce += float(F.cross_entropy(s, tgt[lo:lo + chunk_size], reduction="sum"))
            if h_t is not None:
                t = head_logits(teacher, h_t[lo:lo + chunk_size]).float().to(device)
                v = shared_vocab(s.shape[-1], t.shape[-1])
                kd_sum += float(divergence.per_token(s[:, :v], t[:, :v]).sum())
        n = int(tgt.numel())
        ce_sum, tokens = ce_sum + b_ce, tokens + n
        if n:
            batch_ce.append(b_ce / n)
    return {"ce_sum": ce_sum, "kd_sum": kd_sum, "tokens": tokens, "batch_ce": batch_ce}


@dataclass
class Validator:
    """Dev-split validation of a training run; `__call__(trainer)` -> the row written to train_log.jsonl."""

    encoded: Sequence[dict]                 # dev examples as training sequences (CE, divergence)
    examples: Sequence[Example]             # dev examples whose prompts are generated from (ROUGE-L)
    tokenizer: Any
    teacher: Optional[nn.Module]            # the live teacher model (None: SFT)
    divergence: Optional[Divergence]        # the method's base divergence (None: SFT)
    generation: Dict[str, Any]              # sampling settings of the evaluation protocol (eval.*)
    seed: int                               # the generation seed (the protocol's first)
    batch_size: int = 16
    chunk_size: int = 1024
    engine: Any = None                      # a PolicyEngine (eval.engine=vllm) or None: the native sampler

    def __call__(self, trainer) -> Dict[str, Any]:
        t0 = time.time()
        student = trainer.student
        was_training = student.training
        student.eval()
        try:
            losses = dev_losses(student, self.teacher, self.divergence, self.encoded,
                                pad_id=self.tokenizer.pad_token_id, device=trainer.device,
                                teacher_device=trainer.teacher_device, autocast=trainer._autocast,
                                batch_size=self.batch_size, chunk_size=self.chunk_size)
            row: Dict[str, Any] = {"step": int(trainer.step), "split": "dev", "n_examples": len(self.encoded),
                                   "n_tokens": losses["tokens"],
                                   "val_ce": losses["ce_sum"] / losses["tokens"] if losses["tokens"] else math.nan}
            if self.divergence is not None and self.teacher is not None:
                row["val_kd"] = losses["kd_sum"] / losses["tokens"] if losses["tokens"] else math.nan
            if self.examples:
                row["val_rougeL"] = self.rouge(student)
                row["val_samples"] = len(self.examples)
        finally:
            student.train(was_training)
        row["val_seconds"] = round(time.time() - t0, 3)
        return row

    def rouge(self, student: nn.Module) -> float:
        """Dev ROUGE-L of the student's samples; its one call to generation (the protocol's engine)."""
        g = self.generation
        keys = [ex.id or f"dev:{i}" for i, ex in enumerate(self.examples)]
        chat = bool(g.get("chat_template", False))   # the prompts as evaluation gives them (evaluate.model_prompts)
        prompts = [apply_chat_template(self.tokenizer, ex.prompt) if chat else ex.prompt for ex in self.examples]
        settings = SimpleNamespace(**{**g, "chat_template": chat, "seeds": [self.seed]})
        engine = self.engine.for_model(student, current=True) if self.engine is not None else None
        preds = sample_all_seeds(student, self.tokenizer, prompts, keys, settings, engine=engine)[self.seed]
        scores = rouge_l_scores([p.strip() for p in preds], [ex.references for ex in self.examples])
        return sum(scores) / len(scores)


def validation_steps(val_every: Optional[int], total_steps: int, steps_per_epoch: Optional[int]) -> List[int]:
    """The steps after which to validate (0 = before the first): every `val_every` steps; None: once per
    epoch where the run is epoch-based (steps_per_epoch given), else 5 times over the run; 0: never. The last
    step is always included, so every curve ends where the run ends."""
    if val_every == 0:
        return []
    every = val_every or steps_per_epoch or max(1, math.ceil(total_steps / 5))
    return sorted({0, *range(every, total_steps + 1, every), total_steps})
