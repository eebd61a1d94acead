"""Shared by the judge tests: finished-run directories written by hand, and a small HTTP server on 127.0.0.1
that answers like an OpenAI-compatible endpoint or misbehaves on purpose (for the failure tests only; the
end-to-end test judges with a real vLLM server, tests/test_judge_vllm.py)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional

from adakd.data.prompts import render_prompt

BENCHES = ["b1", "b2"]


def write_run(root: Path, name: str, answers: Dict[str, List[str]], *, seeds=(10, 20), task="distil",
              sha="abc", baselines: Optional[Dict[str, Path]] = None, method="rkl", adakd="adakd") -> Path:
    """A finished run: metrics.json and predictions/<bench>.jsonl (answer i of a benchmark for example i,
    the same at every seed unless the answer is a callable of the seed)."""
    d = root / name
    (d / "predictions").mkdir(parents=True)
    rouge, files = {}, {}
    for bench, preds in answers.items():
        rows = []
        for i, p in enumerate(preds):
            for s in seeds:
                rows.append({"id": f"{bench}:{i}", "seed": s, "prompt": render_prompt(f"question {i} of {bench}"),
                             "prediction": p(s) if callable(p) else p, "references": [f"reference {i}"],
                             "rougeL": 0.0})
        (d / "predictions" / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        rouge[bench] = {"mean": 0.0, "std": 0.0, "per_seed": [0.0] * len(seeds), "n": len(preds)}
        files[bench] = [{"path": f"/data/{bench}.jsonl", "sha256": sha}]
    metrics = {"status": "ok", "rougeL": rouge, "avg": 0.0,
               "protocol": {"seeds": list(seeds), "data_files": files},
               "run": {"name": name, "dir": str(d), "task": task, "method": method, "adakd": adakd}}
    if baselines:
        metrics["baselines"] = {k: {"label": k, "rougeL": rouge, "avg": 0.0, "dir": str(v)}
                                for k, v in baselines.items()}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


class StubServer:
    """`reply(body) -> (status, body bytes)` decides each answer of POST /v1/completions; every request is
    recorded. `delay` seconds before each answer. Bound to 127.0.0.1 on a free port."""

    def __init__(self, reply: Callable[[dict], tuple], delay: float = 0.0, models=("judge",)):
        self.requests: List[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": m} for m in models]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                time.sleep(delay)
                status, data = reply(body)
                try:
                    self._send(status, data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str, prompt_tokens: int = 10, completion_tokens: int = 5) -> tuple:
    return 200, json.dumps({"choices": [{"text": text, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}).encode()


def prefers(word: str) -> Callable[[dict], tuple]:
    """A judge that picks whichever answer contains `word` ([[C]] when both or neither do)."""
    def reply(body):
        p = body["prompt"]
        a = p.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
        b = p.split("[Answer B]\n", 1)[1].split("\n\nDecide", 1)[0]
        if (word in a) == (word in b):
            return completion("Both alike. [[C]]")
        return completion("Better: [[A]]" if word in a else "Better: [[B]]")
    return reply
