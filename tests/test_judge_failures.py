"""The judge against servers that misbehave on purpose (a small HTTP server on 127.0.0.1 in the test, not a
judge: the end-to-end test with a real vLLM server is tests/test_judge_vllm.py): down, slow, answering garbage,
refusing, dying mid-way. Each gives a clear error or counted failures, never a crash without a message and
never a silent tie. Also: the command end to end, the cache across invocations, and kill -9 during judging."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adakd.judge.cache import JudgmentCache
from adakd.judge.cli import main
from adakd.judge.client import JudgeClient, JudgeServerError
from adakd.judge.judging import JudgingStopped, ask, build_requests, pair_rows
from adakd.judge.prompts import load_template
from adakd.judge.runs import Pair
from adakd.judge.server import free_port
from adakd.judge.cli import load_config

from .judge_helpers import StubServer, completion, prefers, write_run

PAIRS = [Pair("b1", f"b1:{i}", 10, f"q{i}", f"r{i}", f"good {i}", f"bad {i}") for i in range(4)]


def _cfg(url, **kw):
    return load_config(None, [f"base_url={url}", "model=judge", "retries=1", "backoff=0", "progress=false",
                              *[f"{k}={v}" for k, v in kw.items()]])


def _judge(cfg, tmp_path, pairs=PAIRS):
    reqs = build_requests(pairs, cfg, "judge", load_template(cfg.template))
    client = JudgeClient(cfg.base_url, "judge", cfg.api, timeout=cfg.timeout, retries=cfg.retries,
                         backoff=cfg.backoff)
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        tally = ask(reqs, client, cache, cfg)
        return tally, pair_rows(pairs, reqs, cache, tally.failures)


def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"      # nothing listens there
    with pytest.raises(JudgeServerError, match="cannot reach the judge server"):
        JudgeClient(url, "judge", "completions", timeout=2).check()


def test_wrong_model_name_is_a_clear_error():
    with StubServer(prefers("good"), models=("other",)) as s:
        with pytest.raises(JudgeServerError, match="does not serve 'judge'"):
            JudgeClient(s.url, "judge", "completions").check()


def test_slow_server_gives_counted_api_failures_not_ties(tmp_path):
    with StubServer(prefers("good"), delay=1.5) as s:
        tally, rows = _judge(_cfg(s.url, timeout=0.3, max_consecutive_failures=0), tmp_path)
    assert tally.failed == 8 and tally.answered == 0
    assert all(r["outcome"] is None and r["failure"] == "api" for r in rows)
    assert "no answer within 0.3 s" in next(iter(tally.failures.values()))


def test_garbage_answers_are_api_failures_and_nonsense_verdicts_parse_failures(tmp_path):
    def reply(body):
        if "q0" in body["prompt"]:
            return 200, b"<html>not json</html>"
        if "q1" in body["prompt"]:
            return 200, b'{"choices": []}'
        if "q2" in body["prompt"]:
            return completion("I cannot decide.")       # answered, but no verdict
        return completion("[[A]]" if "[Answer A]\ngood" in body["prompt"] else "[[B]]")

    with StubServer(reply) as s:
        tally, rows = _judge(_cfg(s.url, max_consecutive_failures=0), tmp_path)
    assert [r["failure"] for r in rows] == ["api", "api", "parse", ""]
    messages = " ".join(tally.failures.values())
    assert "malformed answer" in messages and "no completion in the answer" in messages
    assert rows[2]["problems"] == {"ab": "no verdict", "ba": "no verdict"}
    assert rows[3]["outcome"] == "win" and rows[3]["consistent"]
    assert len(s.requests) == 4 + 4 + 2 + 2     # q0, q1: two attempts in each order; q2, q3: one


def test_transient_errors_are_retried(tmp_path):
    seen = {}

    def reply(body):
        seen[body["prompt"]] = seen.get(body["prompt"], 0) + 1
        return (503, b'{"error": "busy"}') if seen[body["prompt"]] == 1 else prefers("good")(body)

    with StubServer(reply) as s:
        tally, rows = _judge(_cfg(s.url, retries=2), tmp_path)
    assert tally.failed == 0 and [r["outcome"] for r in rows] == ["win"] * 4
    assert len(s.requests) == 16


def test_a_refused_request_stops_with_the_servers_message(tmp_path):
    with StubServer(lambda body: (400, b'{"error": "max_tokens is too large"}')) as s:
        with pytest.raises(JudgeServerError, match="HTTP 400.*max_tokens is too large"):
            _judge(_cfg(s.url), tmp_path)


def test_a_server_dying_midway_stops_the_command(tmp_path):
    with StubServer(lambda body: (500, b"{}")) as s:
        with pytest.raises(JudgingStopped, match="3 judge requests failed in a row"):
            _judge(_cfg(s.url, max_consecutive_failures=3, concurrency=1), tmp_path)


def _runs(root: Path, per_seed: bool = False):
    """Run A answers "good", its SFT row "bad" (but for one tie in b2); with per_seed every answer differs by
    seed, so that all 32 requests are distinct."""
    def ans(text):
        return (lambda s: f"{text} at {s}") if per_seed else text

    sft = write_run(root, "sft", {"b1": [ans(f"bad {i}") for i in range(6)], "b2": [ans("bad x"), ans("good y")]},
                    task="sft")
    return write_run(root, "a", {"b1": [ans(f"good {i}") for i in range(6)], "b2": [ans("good x"), ans("good y z")]},
                     baselines={"sft": sft})


def test_command_end_to_end_and_the_cache_asks_nothing_twice(tmp_path, capsys):
    a = _runs(tmp_path)
    with StubServer(prefers("good")) as s:
        args = ["--a", str(a), "--b", "sft", f"base_url={s.url}", "model=judge", f"output_root={tmp_path / 'out'}",
                "progress=false", "bootstrap=200", "logger.name=none"]
        assert main(args) == 0
        # 16 pairs x 2 orders, but the answers are the same at both seeds: 16 distinct requests, asked once
        assert len(s.requests) == 16
        table = (tmp_path / "out" / "tables" / "a-vs-sft-judge.md").read_text()
        assert main(args + ["max_examples=1"]) == 0          # a subset: all answered already
        assert main(args) == 0
        assert len(s.requests) == 16                          # nothing asked again
    assert (tmp_path / "out" / "tables" / "a-vs-sft-judge.md").read_text() == table
    summary = json.loads((tmp_path / "out" / "judge" / "a-vs-sft" / "summary.json").read_text())
    overall = summary["scores"]["overall"]
    assert overall["counts"] == {"win": 14, "tie": 2, "loss": 0} and overall["consistency"] == 1.0
    assert summary["scores"]["b2"]["counts"] == {"win": 2, "tie": 2, "loss": 0}
    assert "| overall | 16 | 16 | 14 | 2 | 0 |" in table
    assert (tmp_path / "out" / "tables" / "a-vs-sft-judge.csv").exists()
    assert (tmp_path / "out" / "tables" / "a-vs-sft-judge.png").exists()
    assert "key" not in json.dumps(summary["judge"]["settings"]).replace("api_key_env", "")
    err = capsys.readouterr().err
    assert "32 needed, 32 from the cache, 0 asked" in err


def test_command_reports_a_down_server_in_one_line(tmp_path, capsys):
    a = _runs(tmp_path)
    # settings before and after the flags
    code = main([f"base_url=http://127.0.0.1:{free_port()}/v1", "--a", str(a), "--b", "sft", "model=judge",
                 f"output_root={tmp_path / 'out'}", "timeout=2"])
    assert code == 2
    assert "adakd-judge: error: cannot reach the judge server" in capsys.readouterr().err


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.faults
@pytest.mark.integration
def test_kill_9_during_judging_then_again_asks_nothing_twice(tmp_path):
    a = _runs(tmp_path, per_seed=True)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with StubServer(prefers("good"), delay=0.15) as s:
        def cmd(root):
            return [sys.executable, "-m", "adakd.judge.cli", "--a", str(a), "--b", "sft", f"base_url={s.url}",
                    "model=judge", f"output_root={root}", "concurrency=2", "progress=false", "bootstrap=200"]
        cache = tmp_path / "out" / "judge" / "cache" / "judge.jsonl"
        proc = subprocess.Popen(cmd(tmp_path / "out"), env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while _count_lines(cache) < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        cached = _count_lines(cache)
        assert 10 <= cached < 32
        before = len(s.requests)
        subprocess.run(cmd(tmp_path / "out"), env=env, check=True, capture_output=True)
        again = len(s.requests) - before
        assert again == 32 - cached                 # only the requests never answered are sent again
        # the same table as a judging that was never interrupted
        subprocess.run(cmd(tmp_path / "clean"), env=env, check=True, capture_output=True)
    killed = (tmp_path / "out" / "tables" / "a-vs-sft-judge.md").read_text()
    assert killed == (tmp_path / "clean" / "tables" / "a-vs-sft-judge.md").read_text()
