"""A benchmark case in its own process (a fresh RSS baseline, its own allocator): commands go down its stdin
one per line, one JSON line comes back per command; `quit` ends it."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List

# glibc: no mmap'd chunks and no trimming, so peak RSS counts every allocation the case makes
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


class Worker:
    def __init__(self, cmd: List[str], name: str):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **MALLOC_ENV})

    def ask(self, cmd: str) -> Dict[str, Any]:
        """Send `cmd` ("" only reads: the ready line) and return the worker's JSON answer."""
        if cmd:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"benchmark worker {self.name} died:\n{err[-4000:]}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
