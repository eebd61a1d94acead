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


class preemptible:
    """Around a whole run (cli.py): SIGTERM outside the training loop -- loading, evaluation, writing results
    -- has no step boundary to wait for, so it stops the run at once with Preempted (exit code 75). Files
    are written atomically, so nothing is half-written, and the same command resumes (training from its
    last checkpoint, evaluation from the start). Inside `Trainer.train` the step-boundary handler wins."""

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:   # not the main thread
            self._old = None
        return self

    @staticmethod
    def _handle(signum, frame):
        raise Preempted(f"signal {signum} outside the training loop (no checkpoint was needed); "
                        "run the same command again to resume")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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
        from .distributed import is_fsdp
        self.fsdp = is_fsdp(student)     # train.fsdp: sharded student (adakd.distributed.wrap_fsdp)
        self.teacher_device = _device_of(teacher, device)   # model.teacher.device may put it elsewhere
        self.on_step_end = on_step_end
        # A recipe (GKD, DistiLLM) may replace or augment the batches; by default they come from the data.
        self.batch_source = batch_source
        # The global batch is the config's; each rank takes global/world of it, in micro-batches. A micro
        # batch larger than a rank's share is cut to the share (more processes: less accumulation).
        self.micro_batch = int(train_cfg.micro_batch)
        share, rem = divmod(int(train_cfg.global_batch), world_size)
        if not rem and self.micro_batch > share:
            log.warning("micro batch %d -> %d: the share of each of %d processes of global batch %d (the result "
                        "then matches one process with micro_batch=%d)", self.micro_batch, share, world_size,
                        train_cfg.global_batch, share)
            self.micro_batch = share
        per_step = self.micro_batch * world_size
        if train_cfg.global_batch % per_step:
            raise ValueError(f"train.global_batch={train_cfg.global_batch} is not divisible by "
                             f"micro_batch x world_size = {self.micro_batch} x {world_size}")
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
        self.last_loss = float("nan")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log_path = self.run_dir / "train_log.jsonl"
        self.telemetry_path = self.run_dir / "telemetry.jsonl"
        self._saved_step: Optional[int] = None   # the step whose checkpoint is on disk already
        self._last_ids: List[int] = []            # dataset indices of the current step (diagnostics)

    # ------------------------------------------------------------------------------------------ state
    def state(self, rng_ranks: Optional[List[Dict[str, Any]]] = None,
              optimizer_state: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        rng_ranks = rng_ranks or [ckpt.capture_rng()]
        if optimizer_state is None:
            optimizer_state = self.optimizer.state_dict()
        return {
            "step": self.step, "position": self.position, "skipped": self.skipped,
            "last_loss": self.last_loss,
            "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
            "fsdp": self.fsdp,              # the optimizer state's layout (full, by name) under FSDP
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "batch_source": self.batch_source.state_dict() if hasattr(self.batch_source, "state_dict") else {},
            "rng": rng_ranks[0],            # rank 0 (and single-process runs)
            "rng_ranks": rng_ranks,         # one entry per rank: each rank gets its own streams back
        }

    def load_state(self, st: Dict[str, Any]) -> None:
        self.step, self.position, self.skipped = st["step"], st["position"], st.get("skipped", 0)
        self.last_loss = float(st.get("last_loss", float("nan")))
        if bool(st.get("fsdp", False)) != self.fsdp:
            raise ValueError(f"the checkpoint in {self.ckpt_dir} was written with train.fsdp="
                             f"{str(bool(st.get('fsdp', False))).lower()}: resume with the same setting "
                             "(any number of processes)")
        if self.fsdp:   # the full (unsharded) optimizer state, scattered into this rank's shards
            from .distributed import load_full_optimizer_state
            load_full_optimizer_state(self.student, self.optimizer, st["optimizer"])
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.objective is not None and st.get("objective"):
            self.objective.load_state_dict(st["objective"])
        if hasattr(self.batch_source, "load_state_dict") and st.get("batch_source"):
            self.batch_source.load_state_dict(st["batch_source"])
        ranks = st.get("rng_ranks") or [st["rng"]]
        if len(ranks) != self.world_size:
            log.warning("checkpoint has RNG states of %d rank(s), this run has %d: rank %d restores rank %d's",
                        len(ranks), self.world_size, self.rank, self.rank % len(ranks))
        ckpt.restore_rng(ranks[self.rank % len(ranks)])   # last: nothing random may run after it

    def save_checkpoint(self) -> None:
        if self._saved_step == self.step:   # e.g. a signal right after a periodic save: nothing new
            return
        rng_ranks = _gather_rng(self.world_size)   # collective: every rank takes part
        model, optim = self.student, None
        if self.fsdp:   # gathering the full weights and optimizer state is a collective too
            from .distributed import FullStateView, full_optimizer_state
            model = FullStateView(self.student)
            model.state_dict()
            optim = full_optimizer_state(self.student, self.optimizer)
        if self.rank == 0:
            ckpt.save(self.ckpt_dir, self.step, model, self.state(rng_ranks, optim), keep_last=self.cfg.keep_last)
        self._saved_step = self.step

    def try_resume(self) -> Optional[int]:
        if self.fsdp:
            from .distributed import FullStateView
            found = ckpt.load_latest(self.ckpt_dir, FullStateView(self.student))
        else:
            found = ckpt.load_latest(self.ckpt_dir, self.student)
        if found is None:
            # A fresh start (or every checkpoint refused): rows a killed attempt logged would be duplicated.
            if self.rank == 0:
                _truncate_log(self.log_path, 0)
                _truncate_log(self.telemetry_path, 0)
            return None
        step, st = found
        self.load_state(st)
        self._saved_step = step
        if self.rank == 0:
            _truncate_log(self.log_path, step)
            _truncate_log(self.telemetry_path, step)
        log.info("resumed from checkpoint at step %d (data position %d)", step, self.position)
        return step

    # ------------------------------------------------------------------------------------------- loop
    def micro_batches(self) -> List[Dict[str, torch.Tensor]]:
        """The micro-batches of the next optimizer step (this rank's share)."""
        gb = self.cfg.global_batch
        ids = self.sampler.take(self.position, gb)
        self._last_ids = ids
        self.position += gb
        mb = self.micro_batch
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
            if self.fsdp:   # the sharded root computes body + head in one forward (adakd.distributed)
                h_s, s_full = None, self.student(batch["input_ids"], batch["attention_mask"], mask)
            else:
                h_s, s_full = hidden_at(self.student, batch["input_ids"], batch["attention_mask"], mask), None
        if self.teacher is None or self.kd_ratio == 0.0:
            logits = (s_full if self.fsdp else head_logits(self.student, h_s)).float()
            ce = token_ce(logits, tgt)
            stats["ce"] = float(ce.detach())
            return ce, stats
        tdev = self.teacher_device
        with torch.no_grad(), self._autocast(), self._autocast(tdev):
            if tdev == self.device:
                h_t = hidden_at(self.teacher, batch["input_ids"], batch["attention_mask"], mask)
            else:   # the teacher lives on another device: send the batch there, bring results back
                h_t = hidden_at(self.teacher, batch["input_ids"].to(tdev), batch["attention_mask"].to(tdev),
                                mask.to(tdev))
        ce = None
        if getattr(self.cfg, "loss_impl", "chunked") == "fused":
            _, s_head = lm_parts(self.student)
            _, t_head = lm_parts(self.teacher)
            t_bias = getattr(t_head, "bias", None)
            kd, kstats = self.objective.forward_hidden(
                # teacher rows in the teacher head's dtype (bf16 teacher on GPU): F.linear needs one dtype
                h_s[None].float(), s_head.weight, h_t.to(self.device, t_head.weight.dtype)[None],
                t_head.weight.to(self.device),
                tgt[None], telemetry=telemetry, student_head_bias=getattr(s_head, "bias", None),
                teacher_head_bias=None if t_bias is None else t_bias.to(self.device))
            if self.kd_ratio < 1.0:
                ce = _chunked_ce(h_s, s_head, tgt, self.cfg.loss_chunk_size)
        else:
            with self._autocast():
                s_logits = s_full if self.fsdp else head_logits(self.student, h_s)
            with torch.no_grad(), self._autocast(tdev):
                t_logits = head_logits(self.teacher, h_t).to(self.device)
            kd, kstats = self.objective(s_logits[None], t_logits[None], tgt[None], telemetry=telemetry)
            if self.kd_ratio < 1.0:
                ce = token_ce(s_logits, tgt)
        return self.mix(kd, ce, stats, kstats)

    def mix(self, kd: torch.Tensor, ce: Optional[torch.Tensor], stats: Dict[str, Any],
            kstats: Dict[str, Any]):
        """(1 - kd_ratio) * CE + kd_ratio * KD, with the statistics of both terms."""
        stats.update(kstats)
        if ce is None:
            return kd, stats
        stats["ce"] = float(ce.detach())
        return (1 - self.kd_ratio) * ce + self.kd_ratio * kd, stats

    def _autocast(self, device: Optional[torch.device] = None):
        dev = device or self.device
        if self.autocast_dtype is None or dev.type != "cuda":
            return torch.autocast(device_type=dev.type, enabled=False)
        return torch.autocast(device_type=dev.type, dtype=self.autocast_dtype)

    def train(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if resumed is None:
            # Whatever ran before (a teacher fine-tune, or nothing because it was cached) must not change
            # the random streams of training: a run restarted from scratch then matches an unbroken one.
            seed_everything(int(self.cfg.seed) + self.rank)
        t0 = time.time()
        history: List[Dict[str, float]] = []
        self.student.train()
        if self.teacher is not None:
            self.teacher.eval()
        bar = _progress(self.total_steps, self.step, enabled=self.progress and self.rank == 0)
        with _StopFlag() as stop:
            while self.step < self.total_steps:
                telemetry = bool(self.telemetry_every) and self.step % self.telemetry_every == 0
                row = self._one_step(telemetry)
                if row is None:   # skipped (non-finite, skip policy)
                    continue
                self.last_loss = row["loss"]
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
        return TrainResult(steps=self.step, final_loss=self.last_loss, seconds=time.time() - t0,
                           resumed_from=resumed, skipped_steps=self.skipped, history=history)

    def _one_step(self, telemetry: bool) -> Optional[Dict[str, Any]]:
        self.optimizer.zero_grad(set_to_none=True)
        batches = self.micro_batches()
        totals: Dict[str, float] = {}
        tensors: Dict[str, List[torch.Tensor]] = {}
        loss_sum = 0.0
        for mi, mb in enumerate(batches):
            if self.fsdp:   # reduce-scatter the gradients once, after the last micro-batch
                self.student.set_requires_gradient_sync(mi == len(batches) - 1)
            loss, stats = self.loss_on(mb, telemetry)
            if not torch.isfinite(loss):
                return self._non_finite(f"loss={float(loss.detach())}", stats, mb, micro=mi)
            (loss / len(batches)).backward()
            loss_sum += float(loss.detach()) / len(batches)
            for k, v in stats.items():
                if k == "_tensors":
                    for tk, tv in v.items():
                        tensors.setdefault(tk, []).append(tv)
                elif isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
        grad_norm = _all_reduce_grads_and_clip(self.student, self.optimizer, self.cfg.grad_clip, self.world_size,
                                               sharded=self.fsdp)
        if not math.isfinite(grad_norm):
            return self._non_finite(f"gradient (grad_norm={grad_norm})", totals, None)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.world_size > 1:   # log (and feed LATF) the global means, as one process would compute them
            from .distributed import all_reduce_mean
            reduced = all_reduce_mean({"\0loss": loss_sum, **totals}, self.world_size)
            loss_sum = reduced.pop("\0loss")
            totals = {k: reduced[k] for k in totals}
        kd_value = totals.get("kd_loss", loss_sum)
        if self.objective is not None:
            self.objective.step_end(kd_value)
        row = {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, **totals}
        if self.objective is not None:
            row["ratio_next"] = float(self.objective.ratio)
        if self.rank == 0:
            _append_jsonl(self.log_path, row)
            if self.step % max(1, self.cfg.log_every) == 0 or self.step == 1:
                self.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.step)
            if tensors:
                _write_telemetry(self.telemetry_path, self.step, tensors)
        return row

    def _non_finite(self, what: str, stats: Dict[str, Any], batch, micro: int = 0) -> Optional[Dict[str, Any]]:
        detail = {k: v for k, v in stats.items() if k != "_tensors"}
        ratio = getattr(self.objective, "ratio", None)
        msg = (f"non-finite {what} at step {self.step + 1} (method={self.method.name}, "
               f"divergence={getattr(self.method, 'divergence', None)}, kd_ratio={self.kd_ratio}, "
               f"LATF ratio={ratio}); stats={json.dumps(detail, default=str)}; "
               f"examples (dataset indices) of this step: {_short(self._last_ids)}")
        if batch is not None:
            msg += (f"; micro-batch {micro}: {int((batch['labels'] != -100).sum())} tokens with labels; "
                    + _safe(lambda: self._token_diagnostic(batch)))
        else:
            msg += "; " + _safe(self._grad_diagnostic)
        if self.cfg.nonfinite == "skip" and self.skipped < self.cfg.max_nonfinite_skips:
            self.skipped += 1
            log.warning("%s -- skipping this step (%d/%d)", msg, self.skipped, self.cfg.max_nonfinite_skips)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        where = f"{kept[-1]}" if kept else f"none yet in {self.ckpt_dir}"
        limit = (f" (the limit train.max_nonfinite_skips={self.cfg.max_nonfinite_skips} is reached)"
                 if self.cfg.nonfinite == "skip" else "")
        raise NonFiniteLoss(msg + f". Stopped{limit}; the last good checkpoint is kept: {where}. "
                            "Set train.nonfinite=skip to skip such steps (up to train.max_nonfinite_skips).")

    @torch.no_grad()
    def _token_diagnostic(self, batch: Dict[str, torch.Tensor]) -> str:
        """Which response tokens carry non-finite logits or a non-finite per-token divergence."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        targets, mask = response_positions(batch["labels"])
        where = mask.nonzero().tolist()   # [row, position] of each response token, in the order of h_s
        tgt = targets[mask].tolist()
        s = head_logits(self.student, hidden_at(self.student, batch["input_ids"], batch["attention_mask"], mask))
        parts = [_bad_rows("student logits", ~torch.isfinite(s.float()).all(-1), where, tgt)]
        if self.teacher is not None and self.kd_ratio > 0:
            tdev = getattr(self, "teacher_device", self.device)   # the teacher may live on another device
            h_t = hidden_at(self.teacher, batch["input_ids"].to(tdev), batch["attention_mask"].to(tdev), mask.to(tdev))
            t = head_logits(self.teacher, h_t).to(s.device)
            parts.append(_bad_rows("teacher logits", ~torch.isfinite(t.float()).all(-1), where, tgt))
            div = getattr(self.method, "divergence", None)
            if div and div != "none":
                from .losses import per_token
                v = min(s.shape[-1], t.shape[-1])
                params = dict(getattr(self.method, "params", None) or {})
                d = per_token(div, s[:, :v].float(), t[:, :v].float(), **params)
                parts.append(_bad_rows(f"per-token {div}", ~torch.isfinite(d), where, tgt, d))
        return "; ".join(parts)

    def _grad_diagnostic(self) -> str:
        names = {id(p): n for n, p in self.student.named_parameters()}
        bad = [names.get(id(p), "objective parameter") for g in self.optimizer.param_groups for p in g["params"]
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        return f"parameters with non-finite gradients: {len(bad)} ({_short(bad)})"


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token CE in fp32; a connected zero when there is no response token."""
    return F.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0


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


def _short(items: Sequence[Any], n: int = 8) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _safe(fn: Callable[[], str]) -> str:
    """A diagnostic must never hide the error it describes."""
    try:
        return fn()
    except Exception as e:   # noqa: BLE001
        return f"(diagnostic failed: {type(e).__name__}: {e})"


def _bad_rows(what: str, bad: torch.Tensor, where: List[List[int]], targets: List[int],
              values: Optional[torch.Tensor] = None) -> str:
    idx = bad.nonzero().flatten().tolist()
    if not idx:
        return f"{what}: all finite"
    shown = [f"(row {where[i][0]}, pos {where[i][1] + 1}, token {targets[i]}"
             + (f", value {float(values[i])}" if values is not None else "") + ")" for i in idx[:5]]
    return f"{what}: non-finite at {len(idx)} of {len(targets)} tokens: {', '.join(shown)}"


def _gather_rng(world_size: int) -> List[Dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective when world_size > 1)."""
    mine = ckpt.capture_rng()
    if world_size == 1:
        return [mine]
    import torch.distributed as dist
    out: List[Any] = [None] * world_size
    dist.all_gather_object(out, mine)
    return out


def _all_reduce_grads_and_clip(model, optimizer, clip: float, world_size: int, sharded: bool = False) -> float:
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if sharded:   # FSDP has reduce-scattered (and averaged) the gradients; norms are over the DTensors
        if not params:
            return 0.0
        if clip and clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
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


def _device_of(model: Optional[nn.Module], default: torch.device) -> torch.device:
    if model is None:
        return default
    p = next(iter(model.parameters()), None)
    return default if p is None else p.device


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
    """After a resume, drop log lines written after the checkpoint (they will be written again), and a
    last line a kill cut in half; step 0 empties the file (a fresh start)."""
    if not path.exists():
        return
    from .io import atomic_write_jsonl, read_jsonl_prefix
    atomic_write_jsonl(path, [r for r in read_jsonl_prefix(path) if r.get("step", 0) <= step])


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
