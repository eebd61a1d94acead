"""Atomic file writes (a crash never leaves a half-written result behind), directory locks (one process
per run directory) and build locks (one builder per shared cache, the others wait and reuse it).

Every result file is written to a temp file in the same directory, flushed to disk, then renamed over
the target (`os.replace` is atomic on POSIX), and the directory entry is synced, so after a kill -9 or
a power cut a reader sees either the old file or the new one, never a mix. Temp files get the normal
permissions (0666 minus the umask), not mkstemp's private 0600, so results stay readable on shared
clusters.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunLocked

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def public_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temp file/dir (created private by mkstemp/mkdtemp) the permissions a plain open() would."""
    try:
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    """Append one JSON line in a single write, so a kill can cut at most the last line (readers skip it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


def read_jsonl_prefix(path: str | os.PathLike) -> list:
    """The complete records of a JSON-lines file that a kill may have cut: stops at the first bad line."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break   # the last line, cut mid-write
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return rows


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _lock_file(path: Path):
    """The `.<name>.lock` beside `path` (its parent made if missing), open for reading and writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path.parent / f".{path.name}.lock", "a+", encoding="utf-8")


def _holder(f) -> str:
    f.seek(0)
    return f.read().strip() or "unknown"


def _claim(f) -> None:
    """Write this process's pid into a lock file it holds (what a refused or waiting process reports)."""
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()


@contextmanager
def hold_directory(path: str | os.PathLike, what: str = "run directory") -> Iterator[Path]:
    """Hold `path` for this process while the block runs: an exclusive OS lock (flock) on `.<name>.lock`
    beside it (so a run that is refused creates nothing in its own directory).

    The kernel releases it when the process ends in any way (kill -9 included), so a stale lock never blocks
    a later run. A second process fails at once with RunLocked, naming the holder's pid and the directory.
    """
    path = Path(path)
    f = _lock_file(path)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise RunLocked(f"the {what} {path} is in use by another process (pid {holder}): wait for it to finish, "
                        "or stop it; this process does nothing") from None
    try:
        _claim(f)
        yield path
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@contextmanager
def build_lock(path: str | os.PathLike, what: str, *, report_every: float = 30.0,
               poll: float = 0.5) -> Iterator[Path]:
    """Hold the lock for building the shared cache `path` (the same `.<name>.lock` beside it as
    hold_directory); where another process holds it, wait for it, saying so at once and every `report_every`
    seconds. The caller checks again, inside the block, whether the cache is now there: the usual pattern is

        if not done(path):
            with build_lock(path, "fine-tuned teacher"):
                if not done(path):
                    build(path)

    so two processes that need one cache build it once, and the second reuses it. A killed builder's lock goes
    with its process (flock), and the waiter then builds (its half-built work, if any, resumes or is redone).
    """
    path = Path(path)
    f = _lock_file(path)
    try:
        t0 = time.monotonic()
        next_report = t0
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= next_report:
                    log.info("waiting for the %s %s: another process (pid %s) is building it (%.0f s so far)",
                             what, path, _holder(f), now - t0)
                    next_report = now + report_every
                time.sleep(poll)
        if time.monotonic() > t0 + poll:
            log.info("the %s %s is free after %.0f s", what, path, time.monotonic() - t0)
        _claim(f)
        yield path
    finally:
        try:
            fcntl.flock(f, fcntl.LOCK_UN)
        finally:
            f.close()
