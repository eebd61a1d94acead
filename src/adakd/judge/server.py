"""A local judge: vLLM's OpenAI-compatible server started for one command, on 127.0.0.1 only.

    with local_server(model_path, served_name, cfg.server, log_path) as base_url: ...

picks a free port, starts `<python> -m vllm.entrypoints.openai.api_server` (the module, not the `vllm` console
script, which fails with vLLM's CPU build) in its own process group, waits for GET /health, yields the base
URL, and stops the whole group on the way out: normal end, error, Ctrl-C, or SIGTERM (which the CLI turns into
an exception). Should this process be killed outright (kill -9), the kernel sends the server SIGTERM
(PR_SET_PDEATHSIG, Linux), so no judge is left running behind.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from ..errors import UserError
from ..schema.judge import LocalServerConfig

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


class LocalServerError(UserError):
    """The local judge server did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_command(python: str, model_path: str, served_name: str, port: int, cfg: LocalServerConfig) -> List[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", HOST,
           "--port", str(port), "--served-model-name", served_name, "--dtype", cfg.dtype]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.enforce_eager:
        cmd += ["--enforce-eager"]
    return cmd + [str(a) for a in cfg.extra_args]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM to it when the judge process dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass   # not Linux: the finally-block below still stops it on every exit but kill -9


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float, log_path: Path) -> float:
    """Seconds until GET /health answers 200; raises LocalServerError if the server exits or times out."""
    t0 = time.time()
    while True:
        code = proc.poll()
        if code is not None:
            raise LocalServerError(f"the local judge server exited with code {code} before it was ready; the end "
                                   f"of its log ({log_path}):\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, OSError):
            pass
        if time.time() - t0 > timeout:
            raise LocalServerError(f"the local judge server did not answer /health within {timeout:g} s "
                                   f"(judge.server.startup_timeout); the end of its log ({log_path}):\n"
                                   f"{_tail(log_path)}")
        time.sleep(1.0)


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def local_server(model_path: str, served_name: str, cfg: LocalServerConfig, log_path: Path,
                 python: Optional[str] = None) -> Iterator[str]:
    """Serve `model_path` as `served_name` while the block runs; yields the base URL (…/v1)."""
    port = free_port()
    cmd = server_command(python or cfg.python or sys.executable, model_path, served_name, port, cfg)
    env = {**os.environ, **{k: str(v) for k, v in cfg.env.items()}}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://{HOST}:{port}"
    print(f"starting the local judge: {' '.join(cmd)} (log: {log_path})", file=sys.stderr, flush=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    try:
        seconds = wait_healthy(proc, base, cfg.startup_timeout, log_path)
        print(f"local judge ready at {base}/v1 after {seconds:.0f} s", file=sys.stderr, flush=True)
        yield f"{base}/v1"
    finally:
        code = proc.poll()
        if code is not None:   # it died while judging: say so, with its last words, whatever the caller reports
            print(f"the local judge server had exited (code {code}) before the command ended; the end of its log "
                  f"({log_path}):\n{_tail(log_path, 12)}", file=sys.stderr, flush=True)
        stop(proc)
        log.info("local judge server stopped")
