"""The judge end to end against a real judge: SmolLM2-135M-Instruct (`make models`) served by vLLM's
OpenAI-compatible server on 127.0.0.1, started and stopped by adakd-judge itself (judge.model_path).

Needs vLLM (the CPU build works) and the model directory in ADAKD_SMOLLM2_DIR; skipped otherwise. Run inside the
environment that has vLLM, e.g. `ADAKD_SMOLLM2_DIR=outputs/models/smollm2-135m-instruct
PYTHONPATH=src .venv-vllm/bin/python -m pytest -m vllm tests/test_judge_vllm.py` (about 2 minutes on 2 cores,
most of it the server's start-up)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from pathlib import Path

import pytest

from adakd.judge.cli import main

from .judge_helpers import write_run

pytestmark = [pytest.mark.vllm, pytest.mark.integration]
# vLLM 0.32's CPU build kills its engine ("CPU Generator does not use offset") when a seeded request is
# prefilled in chunks; whole-prompt prefill avoids it (docs/judge.md)
CPU_SEEDED = "server.extra_args=[--no-enable-chunked-prefill,--max-num-batched-tokens,4096]"


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed in this environment (the CI runs these tests inside .venv-vllm, -m vllm)")
    d = os.environ.get("ADAKD_SMOLLM2_DIR")
    if not d or not (Path(d) / "config.json").is_file():
        pytest.skip("ADAKD_SMOLLM2_DIR is unset or holds no model (make models builds "
                    "outputs/models/smollm2-135m-instruct)")
    return Path(d)


def test_local_vllm_judge_end_to_end(smollm2_dir, tmp_path, capsys):
    answers_a = ["Oltec is the capital of Varnia.", "Water boils at 100 degrees Celsius at sea level.",
                 "Three: red, green and blue."]
    answers_b = ["I like cheese.", "Water is wet.", "Colours are nice."]
    sft = write_run(tmp_path, "sft", {"b1": answers_b}, seeds=(10,), task="sft")
    a = write_run(tmp_path, "a", {"b1": answers_a}, seeds=(10,), baselines={"sft": sft})
    args = ["--a", str(a), "--b", "sft", f"model_path={smollm2_dir}", "model=smollm2", "max_tokens=96",
            "concurrency=4", "server.dtype=float32", "server.max_model_len=2048", "server.enforce_eager=true",
            "server.env.VLLM_CPU_KVCACHE_SPACE=1", CPU_SEEDED, f"output_root={tmp_path / 'out'}", "progress=false",
            "logger.name=none", "bootstrap=200"]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    port = int(re.search(r"local judge ready at http://127\.0\.0\.1:(\d+)/v1", err).group(1))
    summary = json.loads((tmp_path / "out" / "judge" / "a-vs-sft" / "summary.json").read_text())
    assert summary["requests"] == {**summary["requests"], "total": 6, "asked": 6, "answered": 6, "failed": 0}
    overall = summary["scores"]["overall"]
    # whatever a 135M judge says: every pair is judged or counted as a parse failure, none lost or tied silently
    assert overall["pairs"] == 3 and overall["judged"] + overall["failed_pairs"]["parse"] == 3
    assert overall["failed_pairs"]["api"] == 0 and overall["tokens"]["completion"] > 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "judge" / "a-vs-sft" / "judgments.jsonl").read_text().splitlines()]
    assert all(isinstance(r["texts"]["ab"], str) and isinstance(r["texts"]["ba"], str) for r in rows)
    with pytest.raises(OSError):      # the server was stopped with the command
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # the same command again: answered from the cache, no server started
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "starting the local judge" not in err and "6 needed, 6 from the cache, 0 asked" in err
