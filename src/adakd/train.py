"""The training loop: one readable pass from batch to optimizer step.

Student forward -> response positions only -> (teacher forward under no_grad) -> objective -> mix with
CE -> backward, accumulated over micro-batches -> clip -> step -> LATF update -> log / checkpoint.
It trains SFT students too (no teacher, kd_ratio 0). Checkpoints make a killed run resumable exactly:
model, optimizer, scheduler, objective (LATF) state, RNG states, data position and log position.
"""
from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .models import lm_parts

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: "try again"; the next run resumes from the checkpoint just saved


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the step boundary."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients became NaN/inf; the message says where."""


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    resumed_from: Optional[int] = None
    skipped_steps: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)


def lr_lambda(schedule: str, total: int, warmup: int, lr: float, min_lr: float) -> Callable[[int], float]:
    floor = min_lr / lr if lr > 0 else 0.0

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))   # cosine
    return f


class EpochSampler:
    """Deterministic order of training examples: a fresh permutation per epoch from (seed, epoch).

    The data position is then just the number of examples consumed, which makes resuming exact.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def take(self, position: int, count: int) -> List[int]:
        out = []
        while len(out) < count:
            epoch, offset = divmod(position, self.n)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            take = min(count - len(out), self.n - offset)
            out.extend(self._perm[offset:offset + take])
            position += take
        return out


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (pre-emptible clusters)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:   # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def response_positions(labels: torch.Tensor):
    """Shift token-aligned labels to next-token targets; return the mask of positions that are trained on."""
    targets = labels[:, 1:]
    return targets, targets != -100


def hidden_at(model: nn.Module, input_ids, attention_mask, mask) -> torch.Tensor:
    """Final hidden states at the masked positions only ([N, H]); logits are then computed for N rows, not B*L."""
    body, _ = lm_parts(model)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state[:, :-1][mask]


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return lm_parts(model)[1](hidden)


class Trainer:
    def __init__(self, *, student: nn.Module, teacher: Optional[nn.Module], train_data: Sequence[dict],
                 collate: Callable[[List[dict]], Dict[str, torch.Tensor]], objective, method_cfg, train_cfg,
                 run_dir: Path, logger, device: torch.device, total_steps: int, progress: bool = True,
                 batch_source=None, telemetry_every: int = 0, autocast_dtype: Optional[torch.dtype] = None,
                 world_size: int = 1, rank: int = 0, on_step_end: Optional[Callable] = None):
        self.student, self.teacher = student, teacher
        self.data, self.collate = train_data, collate
        self.objective, self.method, self.cfg = objective, method_cfg, train_cfg
        self.run_dir, self.logger, self.device = Path(run_dir), logger, device
        self.total_steps, self.progress = total_steps, progress
        self.telemetry_every = telemetry_every
        self.autocast_dtype = autocast_dtype
        self.world_size, self.rank = world_size, rank
        self.on_step_end = on_step_end
        # A recipe (GKD, DistiLLM) may replace or augment the batches; by default they come from the data.
        self.batch_source = batch_source
        per_step = train_cfg.micro_batch * world_size
        if train_cfg.global_batch % per_step:
            raise ValueError(f"train.global_batch={train_cfg.global_batch} is not divisible by "
                             f"micro_batch x world_size = {train_cfg.micro_batch} x {world_size}")
        self.accum = train_cfg.global_batch // per_step
        self.kd_ratio = float(method_cfg.kd_ratio) if teacher is not None else 0.0
        params = [p for p in student.parameters() if p.requires_grad]
        extra = list(objective.parameters()) if objective is not None else []
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(train_cfg.schedule, total_steps, train_cfg.warmup_steps,
                                      train_cfg.lr, train_cfg.min_lr))
        self.sampler = EpochSampler(len(train_data), train_cfg.seed)
        self.step, self.position, self.skipped = 0, 0, 0
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log_path = self.run_dir / "train_log.jsonl"

    # ------------------------------------------------------------------------------------------ state
    def state(self) -> Dict[str, Any]:
        return {
            "step": self.step, "position": self.position, "skipped": self.skipped,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "batch_source": self.batch_source.state_dict() if hasattr(self.batch_source, "state_dict") else {},
            "rng": ckpt.capture_rng(),
        }

    def load_state(self, st: Dict[str, Any]) -> None:
        self.step, self.position, self.skipped = st["step"], st["position"], st.get("skipped", 0)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.objective is not None and st.get("objective"):
            self.objective.load_state_dict(st["objective"])
        if hasattr(self.batch_source, "load_state_dict") and st.get("batch_source"):
            self.batch_source.load_state_dict(st["batch_source"])
        ckpt.restore_rng(st["rng"])

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        ckpt.save(self.ckpt_dir, self.step, self.student, self.state(), keep_last=self.cfg.keep_last)

    def try_resume(self) -> Optional[int]:
        found = ckpt.load_latest(self.ckpt_dir, self.student)
        if found is None:
            return None
        step, st = found
        self.load_state(st)
        _truncate_log(self.log_path, step)
        log.info("resumed from checkpoint at step %d", step)
        return step

    # ------------------------------------------------------------------------------------------- loop
    def micro_batches(self) -> List[Dict[str, torch.Tensor]]:
        """The micro-batches of the next optimizer step (this rank's share)."""
        gb = self.cfg.global_batch
        ids = self.sampler.take(self.position, gb)
        self.position += gb
        mb = self.cfg.micro_batch
        mine = ids[self.rank * (gb // self.world_size):(self.rank + 1) * (gb // self.world_size)]
        batches = [self.collate([self.data[i] for i in mine[k:k + mb]]) for k in range(0, len(mine), mb)]
        if self.batch_source is not None:
            batches = [self.batch_source(b, self) for b in batches]
        return batches

    def loss_on(self, batch: Dict[str, torch.Tensor], telemetry: bool):
        batch = {k: v.to(self.device) for k, v in batch.items()}
        targets, mask = response_positions(batch["labels"])
        tgt = targets[mask]
        stats: Dict[str, Any] = {"n_tokens": float(mask.sum())}
        with self._autocast():
            h_s = hidden_at(self.student, batch["input_ids"], batch["attention_mask"], mask)
        if self.teacher is None or self.kd_ratio == 0.0:
            logits = head_logits(self.student, h_s).float()
            ce = F.cross_entropy(logits, tgt) if tgt.numel() else logits.sum() * 0.0
            stats["ce"] = float(ce.detach())
            return ce, stats
        with torch.no_grad(), self._autocast():
            h_t = hidden_at(self.teacher, batch["input_ids"], batch["attention_mask"], mask)
        ce = None
        if getattr(self.cfg, "loss_impl", "chunked") == "fused":
            _, s_head = lm_parts(self.student)
            _, t_head = lm_parts(self.teacher)
            kd, kstats = self.objective.forward_hidden(
                h_s[None].float(), s_head.weight, h_t[None].float(), t_head.weight, tgt[None],
                telemetry=telemetry, student_head_bias=getattr(s_head, "bias", None),
                teacher_head_bias=getattr(t_head, "bias", None))
            if self.kd_ratio < 1.0:
                ce = _chunked_ce(h_s, s_head, tgt, self.cfg.loss_chunk_size)
        else:
            with self._autocast():
                s_logits = head_logits(self.student, h_s)
                with torch.no_grad():
                    t_logits = head_logits(self.teacher, h_t)
            kd, kstats = self.objective(s_logits[None], t_logits[None], tgt[None], telemetry=telemetry)
            if self.kd_ratio < 1.0:
                ce = F.cross_entropy(s_logits.float(), tgt) if tgt.numel() else s_logits.sum() * 0.0
        stats.update(kstats)
        loss = kd if ce is None else (1 - self.kd_ratio) * ce + self.kd_ratio * kd
        if ce is not None:
            stats["ce"] = float(ce.detach())
        return loss, stats

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train(self) -> TrainResult:
        resumed = self.try_resume()
        t0 = time.time()
        history: List[Dict[str, float]] = []
        self.student.train()
        if self.teacher is not None:
            self.teacher.eval()
        bar = _progress(self.total_steps, self.step, enabled=self.progress and self.rank == 0)
        last_loss = float("nan")
        with _StopFlag() as stop:
            while self.step < self.total_steps:
                telemetry = bool(self.telemetry_every) and self.step % self.telemetry_every == 0
                row = self._one_step(telemetry)
                if row is None:   # skipped (non-finite, skip policy)
                    continue
                last_loss = row["loss"]
                history.append(row)
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "ratio") if k in row})
                if self.on_step_end is not None:
                    self.on_step_end(self, row)
                if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if stop.signum is not None:
                    self.save_checkpoint()
                    bar.close()
                    raise Preempted(f"signal {stop.signum} at step {self.step}: checkpoint saved in "
                                    f"{self.ckpt_dir}; run the same command again to resume")
        bar.close()
        self.save_checkpoint()
        return TrainResult(steps=self.step, final_loss=last_loss, seconds=time.time() - t0,
                           resumed_from=resumed, skipped_steps=self.skipped, history=history)

    def _one_step(self, telemetry: bool) -> Optional[Dict[str, Any]]:
        self.optimizer.zero_grad(set_to_none=True)
        batches = self.micro_batches()
        totals: Dict[str, float] = {}
        tensors: Dict[str, List[torch.Tensor]] = {}
        loss_sum = 0.0
        for mb in batches:
            loss, stats = self.loss_on(mb, telemetry)
            if not torch.isfinite(loss):
                return self._non_finite(f"loss={float(loss)}", stats, mb)
            (loss / len(batches)).backward()
            loss_sum += float(loss.detach()) / len(batches)
            for k, v in stats.items():
                if k == "_tensors":
                    for tk, tv in v.items():
                        tensors.setdefault(tk, []).append(tv)
                elif isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
        grad_norm = _all_reduce_grads_and_clip(self.student, self.optimizer, self.cfg.grad_clip, self.world_size)
        if not math.isfinite(grad_norm):
            return self._non_finite(f"grad_norm={grad_norm}", totals, None)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        kd_value = totals.get("kd_loss", loss_sum)
        if self.objective is not None:
            self.objective.step_end(_mean_across_ranks(kd_value, self.world_size))
        row = {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, **totals}
        if self.objective is not None:
            row["ratio_next"] = float(self.objective.ratio)
        if self.rank == 0:
            _append_jsonl(self.log_path, row)
            if self.step % max(1, self.cfg.log_every) == 0 or self.step == 1:
                self.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.step)
            if tensors:
                _write_telemetry(self.run_dir / "telemetry.jsonl", self.step, tensors)
        return row

    def _non_finite(self, what: str, stats: Dict[str, Any], batch) -> Optional[Dict[str, Any]]:
        detail = {k: v for k, v in stats.items() if k != "_tensors"}
        msg = (f"non-finite {what} at step {self.step + 1} (method={self.method.name}, "
               f"divergence={self.method.divergence}); stats={json.dumps(detail, default=str)}")
        if batch is not None:
            msg += f"; batch tokens with labels: {int((batch['labels'] != -100).sum())}"
        if self.cfg.nonfinite == "skip" and self.skipped < self.cfg.max_nonfinite_skips:
            self.skipped += 1
            log.warning("%s -- skipping this step (%d/%d)", msg, self.skipped, self.cfg.max_nonfinite_skips)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        raise NonFiniteLoss(msg + f". The last good checkpoint is kept in {self.ckpt_dir}. "
                            "Set train.nonfinite=skip to skip such steps (up to train.max_nonfinite_skips).")


def _chunked_ce(hidden, head, targets, chunk: int) -> torch.Tensor:
    """Mean token CE without materialising all [N, V] logits at once (the fused path's CE term)."""
    n = targets.numel()
    if n == 0:
        return hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        logits = head(hidden[i:i + chunk]).float()
        total = total + F.cross_entropy(logits, targets[i:i + chunk], reduction="sum")
    return total / n


def _all_reduce_grads_and_clip(model, optimizer, clip: float, world_size: int) -> float:
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if world_size > 1:
        import torch.distributed as dist
        for p in params:   # plain averaging keeps world x accum equivalent to one process with more accum
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)
    if not params:
        return 0.0
    if clip and clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def _mean_across_ranks(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size


def _append_jsonl(path: Path, row: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log lines written after the checkpoint: they will be written again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:   # a line cut by a kill
            break
    from .io import atomic_write_text
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _write_telemetry(path: Path, step: int, tensors: Dict[str, List[torch.Tensor]], cap: int = 4096) -> None:
    row: Dict[str, Any] = {"step": step}
    for k, parts in tensors.items():
        flat = torch.cat([t.reshape(-1).float() for t in parts])
        if flat.numel() > cap:   # keep the file small: a deterministic stride sample
            flat = flat[:: math.ceil(flat.numel() / cap)]
        row[k] = [round(x, 5) for x in flat.tolist()]
    _append_jsonl(path, row)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
