"""The judgments asked so far, on disk: an interrupted or repeated judging asks nothing twice.

One JSON line per answered request, appended in a single write right after the answer arrives, so a kill -9
loses at most the requests in flight (and a line cut mid-write, which is dropped when the cache is opened).
The key is a hash of everything that decides the answer: the judge model, the template's digest, the request
settings (endpoint kind, prompt format, temperature, max tokens, seed) and the contents of the pair in its
order (instruction, reference, first answer, second answer). Keying by content, not by run and example, means
a pair whose texts changed is asked again and identical texts are asked once across comparisons.

Only answered requests are cached (the raw text and token usage); the verdict is parsed when scoring, so a
parser change applies without asking again. Failed requests are not cached: the next run asks them again.
One process holds a cache file at a time (flock beside it).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Optional

from ..io import hold_directory


def request_key(settings: Dict[str, Any], instruction: str, reference: str, first: str, second: str) -> str:
    blob = json.dumps({"settings": settings, "pair": [instruction, reference, first, second]}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _valid_prefix(path: Path) -> tuple[Dict[str, Dict[str, Any]], int]:
    """The complete records of the file and the byte length they occupy (a cut last line is not counted)."""
    entries: Dict[str, Dict[str, Any]] = {}
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
                entries[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            good += len(line)
    return entries, good


class JudgmentCache:
    """Use as a context manager: `with JudgmentCache(path) as cache: cache.get(key) / cache.put(row)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: Dict[str, Dict[str, Any]] = {}
        self.dropped_bytes = 0
        self._stack = ExitStack()

    def __enter__(self) -> "JudgmentCache":
        self._stack.enter_context(hold_directory(self.path, what="judgment cache"))
        if self.path.exists():
            self.entries, good = _valid_prefix(self.path)
            size = self.path.stat().st_size
            if size > good:   # a line cut by a kill: drop it, so the next append starts on a fresh line
                self.dropped_bytes = size - good
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.entries.get(key)

    def put(self, row: Dict[str, Any]) -> None:
        """Record one answered request (a dict with `key`); one write of one line."""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        self.entries[row["key"]] = row
