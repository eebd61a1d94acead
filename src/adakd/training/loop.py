"""The training loop: one readable pass from batch to optimizer step.

Per micro-batch: student forward at the response positions -> the teacher side (live teacher under no_grad,
or the top-k cache; training.teachers) -> `(ce, kd)` -> loss = (1 - kd_ratio) * ce + kd_ratio * kd ->
backward, accumulated over the micro-batches of a step -> all-reduce and clip -> optimizer step -> LATF
update (objective.step_end) -> log / checkpoint. It trains SFT students (no teacher, kd_ratio 0) and
fine-tunes teachers too. Checkpoints make a killed run resumable exactly: model, optimizer, scheduler,
objective (LATF) state, data source state, RNG states, data position and log position.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import append_jsonl
from ..kd.objective import HiddenStates
from ..models import lm_parts
from . import checkpoint as ckpt
from .diagnostics import NonFiniteLoss, grad_diagnostic, safe, short, token_diagnostic
from .distributed import (FullStateView, all_reduce_grads_and_clip, all_reduce_mean, full_optimizer_state,
                          gather_rng, is_fsdp, load_full_optimizer_state)
from .forward import chunked_ce, head_logits, hidden_at, response_positions, token_ce
from .logs import truncate_log, write_telemetry
from .schedule import EpochSampler, lr_lambda, seed_everything
from .signals import Preempted, StopFlag
from .settings import TrainSettings
from .teachers import LiveTeacher, TeacherSource

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float                       # training alone (dev validation excluded)
    resumed_from: Optional[int] = None
    skipped_steps: int = 0
    val_seconds: float = 0.0             # the dev validations' time
    best_step: Optional[int] = None      # the step with the best dev ROUGE-L (None: no validation scored it)
    best_rougeL: Optional[float] = None


class Trainer:
    """`settings`: what the loop is told (training.settings). `teacher` is a teacher source (training.teachers)
    or a frozen model (run live), or None (SFT). A recipe's `batch_source` (GKD, DistiLLM) may replace or augment
    the batches, which by default come from `train_data`; `on_step_end(trainer, row)` runs after each step;
    `validator` (training.validation.Validator) runs dev validation after the steps in settings.val_steps."""

    def __init__(self, settings: TrainSettings, *, student: nn.Module,
                 teacher: Optional[TeacherSource | nn.Module], train_data: Sequence[dict],
                 collate: Callable[[List[dict]], Dict[str, torch.Tensor]], objective, run_dir: Path, logger,
                 device: torch.device, batch_source=None, on_step_end: Optional[Callable] = None,
                 validator: Optional[Callable] = None):
        s = self.settings = settings
        self.autocast_dtype = s.autocast_dtype
        if isinstance(teacher, nn.Module):
            teacher = LiveTeacher(teacher, device, self._autocast)
        self.student, self.teacher = student, teacher
        self.data, self.collate = train_data, collate
        self.objective = objective
        self.run_dir, self.logger, self.device = Path(run_dir), logger, device
        self.total_steps, self.progress = s.total_steps, s.progress
        self.world_size, self.rank = s.world_size, s.rank
        self.fsdp = is_fsdp(student)     # train.fsdp: sharded student (training.distributed.wrap_fsdp)
        self.teacher_device = getattr(teacher, "device", device)   # model.teacher.device may put it elsewhere
        # The fused loss takes hidden states + LM heads; the top-k cache has no teacher hidden states.
        self.fused = s.loss_impl == "fused" and getattr(teacher, "has_hidden", False)
        self.on_step_end = on_step_end
        # with select=best_dev the best dev ROUGE-L's weights are kept in run_dir/best
        self.validator, self.val_steps, self.select = validator, set(s.val_steps), s.select
        self.val_seconds, self.best_step, self.best_rougeL = 0.0, None, None
        self.best_dir = self.run_dir / "best"
        self.batch_source = batch_source
        # The global batch is the config's; each rank takes global/world of it, in micro-batches. A micro
        # batch larger than a rank's share is cut to the share (more processes: less accumulation).
        self.micro_batch = s.micro_batch
        share, rem = divmod(s.global_batch, s.world_size)
        if not rem and self.micro_batch > share:
            log.warning("micro batch %d -> %d: the share of each of %d processes of global batch %d (the result "
                        "then matches one process with micro_batch=%d)", self.micro_batch, share, s.world_size,
                        s.global_batch, share)
            self.micro_batch = share
        per_step = self.micro_batch * s.world_size
        if s.global_batch % per_step:
            raise ValueError(f"train.global_batch={s.global_batch} is not divisible by "
                             f"micro_batch x world_size = {self.micro_batch} x {s.world_size}")
        self.accum = s.global_batch // per_step
        self.kd_ratio = s.kd_ratio if teacher is not None and objective is not None else 0.0
        params = [p for p in student.parameters() if p.requires_grad]
        extra = list(objective.parameters()) if objective is not None else []
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=s.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(s.schedule, s.total_steps, s.warmup_steps, s.lr, s.min_lr))
        self.sampler = EpochSampler(len(train_data), s.seed)
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
            "cpu_threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "validation": {"seconds": self.val_seconds, "best_step": self.best_step, "best_rougeL": self.best_rougeL},
            "batch_source": self.batch_source.state_dict() if hasattr(self.batch_source, "state_dict") else {},
            "rng": rng_ranks[0],            # rank 0 (and single-process runs)
            "rng_ranks": rng_ranks,         # one entry per rank: each rank gets its own streams back
        }

    def load_state(self, st: Dict[str, Any]) -> None:
        threads = st.get("cpu_threads")
        if threads is not None and self.device.type == "cpu" and threads != torch.get_num_threads():
            # float reductions run in another order: the resumed run would not match an uninterrupted one
            raise ConfigError(f"the checkpoint in {self.ckpt_dir} was written with {threads} CPU thread(s), this "
                              f"process uses {torch.get_num_threads()}: resume with train.threads={threads}")
        self.step, self.position, self.skipped = st["step"], st["position"], st.get("skipped", 0)
        self.last_loss = float(st.get("last_loss", float("nan")))
        if bool(st.get("fsdp", False)) != self.fsdp:
            raise ValueError(f"the checkpoint in {self.ckpt_dir} was written with train.fsdp="
                             f"{str(bool(st.get('fsdp', False))).lower()}: resume with the same setting "
                             "(any number of processes)")
        if self.fsdp:   # the full (unsharded) optimizer state, scattered into this rank's shards
            load_full_optimizer_state(self.student, self.optimizer, st["optimizer"])
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.objective is not None and st.get("objective"):
            self.objective.load_state_dict(st["objective"])
        val = st.get("validation") or {}
        self.val_seconds = float(val.get("seconds", 0.0))
        self.best_step, self.best_rougeL = val.get("best_step"), val.get("best_rougeL")
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
        rng_ranks = gather_rng(self.world_size)   # collective: every rank takes part
        model, optim = self.student, None
        if self.fsdp:   # gathering the full weights and optimizer state is a collective too
            model = FullStateView(self.student)
            model.state_dict()
            optim = full_optimizer_state(self.student, self.optimizer)
        if self.rank == 0:
            ckpt.save(self.ckpt_dir, self.step, model, self.state(rng_ranks, optim), keep_last=self.settings.keep_last)
        self._saved_step = self.step

    def try_resume(self) -> Optional[int]:
        if self.fsdp:
            found = ckpt.load_latest(self.ckpt_dir, FullStateView(self.student))
        else:
            found = ckpt.load_latest(self.ckpt_dir, self.student)
        if found is None:
            # A fresh start (or every checkpoint refused): rows a killed attempt logged would be duplicated.
            if self.rank == 0:
                truncate_log(self.log_path, 0)
                truncate_log(self.telemetry_path, 0)
            return None
        step, st = found
        self.load_state(st)
        self._saved_step = step
        if self.rank == 0:
            truncate_log(self.log_path, step)
            truncate_log(self.telemetry_path, step)
        log.info("resumed from checkpoint at step %d (data position %d)", step, self.position)
        return step

    # ------------------------------------------------------------------------------------------- loop
    def micro_batches(self) -> List[Dict[str, torch.Tensor]]:
        """The micro-batches of the next optimizer step (this rank's share)."""
        gb = self.settings.global_batch
        ids = self.sampler.take(self.position, gb)
        self._last_ids = ids
        self.position += gb
        mb = self.micro_batch
        mine = ids[self.rank * (gb // self.world_size):(self.rank + 1) * (gb // self.world_size)]
        batches = [self.collate([self.data[i] for i in mine[k:k + mb]]) for k in range(0, len(mine), mb)]
        if self.batch_source is not None:
            batches = [self.batch_source(b, self) for b in batches]
        return batches

    def losses(self, batch: Dict[str, torch.Tensor], telemetry: bool) -> Tuple[Any, Any, Dict[str, Any]]:
        """(CE, KD, statistics) of one micro-batch. A term whose weight is 0 is not computed and comes back
        as 0.0, so `(1 - kd_ratio) * ce + kd_ratio * kd` is exactly the computed term."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        targets, mask = response_positions(batch["labels"])
        tgt = targets[mask]
        stats: Dict[str, Any] = {"n_tokens": float(mask.sum())}
        with self._autocast():
            # [N, H] hidden states; under FSDP the sharded root computes [N, V] logits in one forward
            h_s = (self.student(batch["input_ids"], batch["attention_mask"], mask) if self.fsdp
                   else hidden_at(self.student, batch["input_ids"], batch["attention_mask"], mask))
        ce, kd = 0.0, 0.0
        if self.kd_ratio == 0.0:   # SFT, or a recipe that trains by CE alone
            ce = token_ce(self._student_logits(h_s).float(), tgt)
        elif self.fused:
            s_head = lm_parts(self.student)[1]
            student = HiddenStates(h_s[None].float(), s_head.weight, getattr(s_head, "bias", None))
            teacher = self.teacher.hidden_states(batch, mask, self.device)
            kd, kstats = self.objective(student, teacher, tgt[None], telemetry=telemetry)
            stats.update(kstats)
            if self.kd_ratio < 1.0:
                ce = chunked_ce(h_s, s_head, tgt, self.settings.loss_chunk_size)
        else:
            teacher = self.teacher.rows(batch, mask, self.device)   # logits [1, N, V] or TeacherTopK [1, N]
            with self._autocast():
                s_logits = self._student_logits(h_s)
            # a cached teacher covers the shared vocabulary only; CE keeps the student's own
            kd, kstats = self.objective(s_logits[None, :, : self.teacher.vocab], teacher, tgt[None],
                                        telemetry=telemetry)
            stats.update(kstats)
            if self.kd_ratio < 1.0:
                ce = token_ce(s_logits, tgt)
        if isinstance(ce, torch.Tensor):
            stats["ce"] = float(ce.detach())
        if telemetry and stats.get("_tensors"):
            stats["_tensors"].update(token_places(mask, tgt))
        return ce, kd, stats

    def _student_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.fsdp else head_logits(self.student, rows)

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
            seed_everything(int(self.settings.seed) + self.rank)
        t0 = time.time()
        self.student.train()
        if getattr(self.teacher, "model", None) is not None:
            self.teacher.model.eval()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.rank == 0),
                   desc="train", unit="step", dynamic_ncols=True)
        if self.step == 0 and 0 in self.val_steps:
            self.validate(bar)   # where every curve starts: the student before training
        with StopFlag() as stop:
            while self.step < self.total_steps:
                telemetry = bool(self.settings.telemetry_every) and self.step % self.settings.telemetry_every == 0
                row = self._one_step(telemetry)
                if row is None:   # skipped (non-finite, skip policy)
                    continue
                self.last_loss = row["loss"]
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "ratio") if k in row})
                if self.on_step_end is not None:
                    self.on_step_end(self, row)
                if self.step in self.val_steps:
                    self.validate(bar)
                if self.settings.ckpt_every and self.step % self.settings.ckpt_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if stop.signum is not None:
                    self.save_checkpoint()
                    bar.close()
                    raise Preempted(f"signal {stop.signum} at step {self.step}: checkpoint saved in "
                                    f"{self.ckpt_dir}; run the same command again to resume")
        bar.close()
        self.save_checkpoint()
        return TrainResult(steps=self.step, final_loss=self.last_loss, seconds=time.time() - t0 - self.val_seconds,
                           resumed_from=resumed, skipped_steps=self.skipped, val_seconds=round(self.val_seconds, 2),
                           best_step=self.best_step, best_rougeL=self.best_rougeL)

    def validate(self, bar=None) -> Optional[Dict[str, Any]]:
        """One dev validation (rank 0): its row goes to train_log.jsonl and the logger; the best dev ROUGE-L
        so far is tracked (and, with select=best_dev, its weights saved to run_dir/best)."""
        if self.validator is None or self.rank != 0:
            return None
        row = self.validator(self)
        self.val_seconds += row["val_seconds"]
        append_jsonl(self.log_path, row)
        self.logger.log({f"val/{k[4:]}": v for k, v in row.items() if k.startswith("val_")}, step=self.step)
        score = row.get("val_rougeL")
        if score is not None and (self.best_rougeL is None or score > self.best_rougeL):
            self.best_step, self.best_rougeL = self.step, score
            if self.select == "best_dev":
                ckpt.save(self.best_dir, self.step, self.student, {"step": self.step, "val_rougeL": score},
                          keep_last=1)
        if bar is not None:
            bar.set_postfix({"dev_rougeL": f"{score:.3g}" if score is not None else "-",
                             "dev_s": f"{self.val_seconds:.0f}"})
            bar.unpause()   # the bar's s/step and elapsed time count training steps only (dev_s is apart)
        return row

    def load_best(self) -> Optional[int]:
        """select=best_dev: the best dev ROUGE-L's weights back into the student; the step they are from."""
        found = ckpt.load_latest(self.best_dir, self.student)
        return None if found is None else found[0]

    def _one_step(self, telemetry: bool) -> Optional[Dict[str, Any]]:
        self.optimizer.zero_grad(set_to_none=True)
        batches = self.micro_batches()
        totals: Dict[str, float] = {}
        tensors: Dict[str, List[torch.Tensor]] = {}
        loss_sum = 0.0
        for mi, mb in enumerate(batches):
            if self.fsdp:   # reduce-scatter the gradients once, after the last micro-batch
                self.student.set_requires_gradient_sync(mi == len(batches) - 1)
            ce, kd, stats = self.losses(mb, telemetry)
            loss = (1 - self.kd_ratio) * ce + self.kd_ratio * kd
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
        grad_norm = all_reduce_grads_and_clip(self.student, self.optimizer, self.settings.grad_clip, self.world_size,
                                               sharded=self.fsdp)
        if not math.isfinite(grad_norm):
            return self._non_finite(f"gradient (grad_norm={grad_norm})", totals, None)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.world_size > 1:   # log (and feed LATF) the global means, as one process would compute them
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
            append_jsonl(self.log_path, row)
            if self.step % max(1, self.settings.log_every) == 0 or self.step == 1:
                self.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.step)
            if tensors:
                write_telemetry(self.telemetry_path, self.step, tensors)
        return row

    def _non_finite(self, what: str, stats: Dict[str, Any], batch, micro: int = 0) -> Optional[Dict[str, Any]]:
        detail = {k: v for k, v in stats.items() if k != "_tensors"}
        ratio = getattr(self.objective, "ratio", None)
        msg = (f"non-finite {what} at step {self.step + 1} (method={self.settings.method}, "
               f"divergence={self.settings.divergence}, kd_ratio={self.kd_ratio}, "
               f"LATF ratio={ratio}); stats={json.dumps(detail, default=str)}; "
               f"examples (dataset indices) of this step: {short(self._last_ids)}")
        if batch is not None:
            msg += (f"; micro-batch {micro}: {int((batch['labels'] != -100).sum())} tokens with labels; "
                    + safe(lambda: self._token_diagnostic(batch)))
        else:
            msg += "; " + safe(self._grad_diagnostic)
        if self.settings.nonfinite == "skip" and self.skipped < self.settings.max_nonfinite_skips:
            self.skipped += 1
            log.warning("%s -- skipping this step (%d/%d)", msg, self.skipped, self.settings.max_nonfinite_skips)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        where = f"{kept[-1]}" if kept else f"none yet in {self.ckpt_dir}"
        limit = (f" (the limit train.max_nonfinite_skips={self.settings.max_nonfinite_skips} is reached)"
                 if self.settings.nonfinite == "skip" else "")
        raise NonFiniteLoss(msg + f". Stopped{limit}; the last good checkpoint is kept: {where}. "
                            "Set train.nonfinite=skip to skip such steps (up to train.max_nonfinite_skips).")

    def _token_diagnostic(self, batch: Dict[str, torch.Tensor]) -> str:
        teacher = self.teacher.model if self.teacher is not None and self.kd_ratio > 0 else None
        return token_diagnostic(self.student, teacher, batch, self.device, self.teacher_device,
                                self.settings.divergence, self.settings.divergence_params)

    def _grad_diagnostic(self) -> str:
        return grad_diagnostic(self.student, self.optimizer)


def token_places(mask: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Telemetry: for each response token of a micro-batch (the objective's flat order), its target id, its
    position in its response (0 = the first response token) and how many response tokens follow it (0 = the last:
    the end-of-answer token), so the per-token tensors can be read by place in the answer."""
    seen = mask.long().cumsum(1)
    return {"target": targets.detach().cpu(), "position": (seen - 1)[mask].cpu(),
            "to_end": (mask.long().sum(1, keepdim=True) - seen)[mask].cpu()}

