"""Teacher cache for off-policy data: the teacher's top-k log-probabilities plus its tail mass per response
token, computed once and read from memory-mapped files in every later step, epoch and run.

    train.teacher_cache: {enabled: true, k: 256, tail: student}

What is stored, per response token (a position whose next-token label is not -100), on the vocabulary
shared by teacher and student (the live path's `align_vocab`):
    ids.npy        int32   [T, k]  the teacher's k most likely next tokens (descending)
    logprobs.npy   float16 [T, k]  their log-probabilities at tau = 1
    tail.npy       float32 [T]     log of the remaining mass, log sum_{v not in top-k} p_v (float32: it
                                   can be far below float16's range)
    offsets.npy    int64   [n+1]   rows of example i: offsets[i]:offsets[i+1]
    keys.npy       uint8   [n, 20] sha1 of each example's (input_ids, labels): the cache is content-addressed
    meta.json                      k, vocabulary, counts, sizes, teacher identity, build time
Bytes per token: 6k + 4 (k = 256: 1,540 B, i.e. 1.54 GB per million tokens).

The directory is <output_root>/cache/teacher_topk/<key>, key = hash(teacher recipe, the set of training
sequences, k, vocabulary, format), so every run of a sweep over the same teacher and data shares it, in
any order and any seed; a duplicate sequence is stored once. It is written to a temp directory and
renamed, so a killed build leaves nothing half-made.

The training loop reads it through `training.teachers.CachedTeacher`; the objective compares the student
with its rows (kd.objective, a `TeacherTopK` teacher side): by default ("dense") the teacher row is rebuilt
over the vocabulary with the tail mass spread evenly; "buckets" compares on k + 1 buckets
(kd.losses.sparse). The cache is refused for on-policy recipes (gkd, distillm), whose sequences come from
the current student (experiment.config_check). The directory is chosen by assemble.identity.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import runinfo
from ..errors import DataError
from ..data.prompts import collate_train
from ..kd.losses.sparse import TeacherTopK
from .forward import head_logits, hidden_at, response_positions

log = logging.getLogger(__name__)
FORMAT = 1
FILES = ("ids.npy", "logprobs.npy", "tail.npy", "offsets.npy", "keys.npy")
# Divergences that weigh the student's mass by the teacher's (log-)probability token by token, also where the
# teacher's probability is tiny: the cache merges those tokens into one bucket, so their loss and gradient
# are far off while the student still puts much mass there (adakd.bench.teacher_cache; docs/recipes.md).
TAIL_SENSITIVE = ("rkl", "abkd", "akl")


def bytes_per_token(k: int) -> int:
    return 4 * k + 2 * k + 4


def example_key(input_ids: Sequence[int], labels: Sequence[int]) -> bytes:
    h = hashlib.sha1(np.asarray(input_ids, dtype=np.int32).tobytes())
    h.update(b"|")
    h.update(np.asarray(labels, dtype=np.int32).tobytes())
    return h.digest()


def n_rows(labels: Sequence[int]) -> int:
    return sum(1 for x in labels[1:] if x != -100)


def cache_key(teacher_key: str, examples: Sequence[dict[str, list[int]]], k: int, vocab: int) -> str:
    digests = sorted({example_key(e["input_ids"], e["labels"]) for e in examples})
    data = hashlib.sha256(b"".join(digests)).hexdigest()
    return runinfo.config_hash({"teacher": teacher_key, "data": data, "k": int(k), "vocab": int(vocab),
                                "format": FORMAT}, n=16)


class TeacherCache:
    """A built cache, memory-mapped; `rows_for_batch(batch)` -> TeacherTopK of its response tokens."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:   # written whole by build (renamed into place); damage here is from outside: name the file
            self.meta = json.loads((self.path / "meta.json").read_text())
            self.k, self.vocab = int(self.meta["k"]), int(self.meta["vocab"])
            self.ids = np.load(self.path / "ids.npy", mmap_mode="r")
            self.logprobs = np.load(self.path / "logprobs.npy", mmap_mode="r")
            self.tail = np.load(self.path / "tail.npy", mmap_mode="r")
            self.offsets = np.load(self.path / "offsets.npy")
            keys = np.load(self.path / "keys.npy")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"the teacher cache {self.path} is damaged ({type(e).__name__}: {e}); delete that "
                            "directory and it is built again") from None
        self.index = {bytes(keys[i]): i for i in range(keys.shape[0])}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def disk_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in FILES)

    def rows_of(self, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> TeacherTopK:
        """Rows of several (input_ids, labels) sequences, concatenated in order."""
        spans = []
        for ids, labels in sequences:
            i = self.index.get(example_key(ids, labels))
            if i is None:
                raise KeyError(f"a training sequence of {len(ids)} tokens is not in the teacher cache {self.path} "
                               "(it covers the training data it was built for; an on-policy or changed data "
                               "source cannot use it)")
            spans.append((int(self.offsets[i]), int(self.offsets[i + 1])))
        if not spans:
            return TeacherTopK(torch.zeros(0, self.k, dtype=torch.long), torch.zeros(0, self.k), torch.zeros(0))
        sel = np.concatenate([np.arange(a, b) for a, b in spans]) if len(spans) > 1 else np.arange(*spans[0])
        return TeacherTopK(torch.from_numpy(np.asarray(self.ids[sel], dtype=np.int64)),
                           torch.from_numpy(np.asarray(self.logprobs[sel], dtype=np.float32)),
                           torch.from_numpy(np.asarray(self.tail[sel], dtype=np.float32)))

    def rows_for_batch(self, batch: dict[str, torch.Tensor]) -> TeacherTopK:
        seqs = []
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][row].sum())
            seqs.append((batch["input_ids"][row, :n].tolist(), batch["labels"][row, :n].tolist()))
        return self.rows_of(seqs)


@torch.no_grad()
def build(teacher: torch.nn.Module, examples: Sequence[dict[str, list[int]]], out_dir: Path, *, k: int,
          vocab: int, pad_id: int, device: torch.device | None = None, batch_size: int = 16,
          chunk_size: int = 1024, autocast_dtype: torch.dtype | None = None, progress: bool = False,
          extra_meta: dict[str, Any] | None = None) -> Path:
    """Run the teacher once over the unique sequences and write the cache to out_dir (atomically)."""
    out_dir = Path(out_dir)
    if not 1 <= k < vocab:
        raise ValueError(f"teacher cache k must be in [1, {vocab - 1}] (vocabulary {vocab}), got {k}")
    device = device or next(teacher.parameters()).device
    uniq: dict[bytes, dict[str, list[int]]] = {}
    for e in examples:
        uniq.setdefault(example_key(e["input_ids"], e["labels"]), e)
    keys = sorted(uniq)
    counts = [n_rows(uniq[key]["labels"]) for key in keys]
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    total = int(offsets[-1])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    t0 = time.time()
    try:
        ids_mm = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.int32, shape=(total, k))
        lp_mm = np.lib.format.open_memmap(tmp / "logprobs.npy", mode="w+", dtype=np.float16, shape=(total, k))
        tail_mm = np.lib.format.open_memmap(tmp / "tail.npy", mode="w+", dtype=np.float32, shape=(total,))
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "keys.npy", np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 20))
        order = sorted(range(len(keys)), key=lambda i: -len(uniq[keys[i]]["input_ids"]))
        was_training = teacher.training
        teacher.eval()
        bar = tqdm(total=len(order), desc="teacher cache", disable=not progress, leave=False)
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            b = {kk: v.to(device) for kk, v in collate_train([uniq[keys[i]] for i in idx], pad_id).items()}
            _, mask = response_positions(b["labels"])
            ctx = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                   and device.type == "cuda" else torch.autocast(device_type=device.type, enabled=False))
            with ctx:
                h = hidden_at(teacher, b["input_ids"], b["attention_mask"], mask)
            # rows of h are the batch's rows in order, each row's positions ascending: split per example
            dst = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
            for c in range(0, h.shape[0], chunk_size):
                with ctx:
                    logits = head_logits(teacher, h[c:c + chunk_size])
                lp = F.log_softmax(logits.float()[:, :vocab], dim=-1)
                top, top_ids = lp.topk(k, dim=-1)
                tail = lp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
                rows = dst[c:c + chunk_size]
                ids_mm[rows] = top_ids.to(torch.int32).cpu().numpy()
                lp_mm[rows] = top.to(torch.float16).cpu().numpy()
                tail_mm[rows] = tail.cpu().numpy()
            bar.update(len(idx))
        bar.close()
        teacher.train(was_training)
        for mm in (ids_mm, lp_mm, tail_mm):
            mm.flush()
        del ids_mm, lp_mm, tail_mm
        meta = {"format": FORMAT, "k": int(k), "vocab": int(vocab), "n_sequences": len(keys),
                "n_examples": len(examples), "n_tokens": total, "bytes_per_token": bytes_per_token(k),
                "bytes": sum((tmp / f).stat().st_size for f in FILES),
                "build_seconds": round(time.time() - t0, 3), **(extra_meta or {})}
        meta["mb_per_million_tokens"] = round(bytes_per_token(k) * 1e6 / 2 ** 20, 1)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():   # built meanwhile by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("teacher cache: %d tokens x k=%d in %.1fs -> %s", total, k, time.time() - t0, out_dir)
    return out_dir


__all__ = ["TeacherCache", "build", "bytes_per_token", "cache_key", "example_key"]
