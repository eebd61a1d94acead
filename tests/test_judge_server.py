"""The local-judge launcher's lifecycle (adakd.judge.server), with a stand-in for vLLM's server module: a
`vllm.entrypoints.openai.api_server` on PYTHONPATH that serves GET /health on the given port (or exits, or
never becomes healthy). What is tested is the launcher: port, readiness, stopping on errors, Ctrl-C and kill -9
of the judge. A real vLLM server is tested in tests/test_judge_vllm.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adakd.judge.server import LocalServerError, local_server, server_command
from adakd.schema.judge import LocalServerConfig

STANDIN = textwrap.dedent("""
    import os, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "127.0.0.1"
    open(os.environ["STANDIN_PIDFILE"], "w").write(str(os.getpid()))
    mode = os.environ.get("STANDIN_MODE", "ok")
    if mode == "exit":
        print("standin: cannot load the model", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.end_headers()

    httpd = HTTPServer(("127.0.0.1", port), H)
    if mode == "die":   # healthy, then dies while the judge is judging
        import threading
        threading.Timer(2.0, lambda: (print("standin: engine died", flush=True), os._exit(7))).start()
    httpd.serve_forever()
""")


@pytest.fixture
def standin(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("STANDIN_PIDFILE", str(tmp_path / "pid"))
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_server_command_binds_localhost_only():
    cmd = server_command("py", "/m", "judge", 1234, LocalServerConfig(dtype="float32", max_model_len=2048,
                                                                    enforce_eager=True, extra_args=["--seed", "1"]))
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[-5:] == ["--max-model-len", "2048", "--enforce-eager", "--seed", "1"]


def test_started_healthy_and_stopped_on_an_error(standin):
    with pytest.raises(RuntimeError, match="boom"):
        with local_server("/m", "judge", LocalServerConfig(startup_timeout=60), standin / "log") as url:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            pid = int((standin / "pid").read_text())
            assert _alive(pid)
            raise RuntimeError("boom")
    assert _gone(pid)


def test_a_server_that_exits_is_reported_with_its_log(standin, monkeypatch):
    monkeypatch.setenv("STANDIN_MODE", "exit")
    with pytest.raises(LocalServerError, match="exited with code 3(.|\n)*cannot load the model"):
        with local_server("/m", "judge", LocalServerConfig(startup_timeout=60), standin / "log"):
            pass


def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(standin, monkeypatch):
    monkeypatch.setenv("STANDIN_MODE", "hang")
    with pytest.raises(LocalServerError, match="did not answer /health within 3 s"):
        with local_server("/m", "judge", LocalServerConfig(startup_timeout=3), standin / "log"):
            pass
    assert _gone(int((standin / "pid").read_text()))


def test_a_server_that_dies_while_judging_is_reported_with_its_log(standin, monkeypatch, capsys):
    monkeypatch.setenv("STANDIN_MODE", "die")
    with local_server("/m", "judge", LocalServerConfig(startup_timeout=60), standin / "log"):
        deadline = time.time() + 30
        while _alive(int((standin / "pid").read_text())) and time.time() < deadline:
            time.sleep(0.1)
    err = capsys.readouterr().err
    assert "the local judge server had exited (code 7)" in err and "standin: engine died" in err


@pytest.mark.integration
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_ctrl_c_or_kill_9_of_the_judge_stops_the_server(standin, how):
    # The judge gets Python's own Ctrl-C handler back: a process started in the background by a non-interactive
    # shell (a CI script run with `&`) inherits SIGINT ignored, and Python then leaves it ignored, which is not
    # the situation of a judge run at a terminal.
    script = ("import signal, time, pathlib; from adakd.judge.server import local_server; "
              "from adakd.schema.judge import LocalServerConfig\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"with local_server('/m', 'judge', LocalServerConfig(startup_timeout=60), pathlib.Path({str(standin / 'log')!r})):\n"
              f"    pathlib.Path({str(standin / 'ready')!r}).write_text('1'); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ["PYTHONPATH"], str(Path(__file__).parents[1] / "src")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    pid = None
    try:
        deadline = time.time() + 60
        while not (standin / "ready").exists() and time.time() < deadline:
            time.sleep(0.1)
        pid = int((standin / "pid").read_text())
        assert _alive(pid)
        proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone(pid), "the server outlived the judge"
    finally:   # a failed check leaves no judge and no server behind
        if proc.poll() is None:
            proc.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
