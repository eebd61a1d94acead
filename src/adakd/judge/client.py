"""A small client for an OpenAI-compatible server (vLLM, the OpenAI API, llama.cpp, ...): the standard
library only (urllib), one blocking call per request; adakd.judge.judging runs them on a thread pool.

Failures are sorted, never swallowed:
- retryable (connection refused or reset, timeout, HTTP 408 / 429 / 5xx, a body that is not the expected
  JSON): retried `retries` times with exponential backoff, then raised as ApiFailure, which the caller counts;
- fatal (any other HTTP 4xx: a wrong model name, a bad key, a request the server refuses): raised as
  JudgeServerError at once, with the server's message -- every other request would fail the same way.
The API key is read from the environment variable the config names, sent as a header, and never logged.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import UserError

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class JudgeServerError(UserError):
    """The judge server is unreachable or refuses the requests: nothing would be judged."""


class ApiFailure(Exception):
    """A request that failed after its retries (counted as an API failure of its pair)."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Optional[str]


def _trim(s: str, n: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n] + "..."


class JudgeClient:
    def __init__(self, base_url: str, model: str, api: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 3, backoff: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._key = os.environ.get(api_key_env) or None

    def _headers(self) -> Dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers())
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def served_models(self) -> List[str]:
        """GET /models: the names the server answers to. Raises JudgeServerError when it cannot be reached."""
        try:
            data = self._call("GET", "/models")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise JudgeServerError(f"the judge server at {self.base_url} refuses the key (HTTP {e.code}); "
                                       "set the environment variable named by judge.api_key_env") from None
            return []   # a server without /models: nothing to check the name against
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise JudgeServerError(f"cannot reach the judge server at {self.base_url} ({reason}): is it running? "
                                   "(judge.base_url, or judge.model_path to start one)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JudgeServerError(f"{self.base_url}/models did not answer JSON: is judge.base_url an "
                                   "OpenAI-compatible endpoint (it usually ends in /v1)?") from None
        return [str(m.get("id")) for m in (data.get("data") or []) if isinstance(m, dict)] \
            if isinstance(data, dict) else []

    def check(self) -> None:
        """Before any request: the server answers and serves the model (when it lists its models)."""
        models = self.served_models()
        if models and self.model not in models:
            raise JudgeServerError(f"the judge server at {self.base_url} does not serve {self.model!r}; it "
                                   f"serves {models} (judge.model)")

    def complete(self, body: Dict[str, Any]) -> Reply:
        """One request (body: the prompt part and sampling settings; the model is added), with retries."""
        path = "/chat/completions" if self.api == "chat" else "/completions"
        payload = {"model": self.model, **body}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._parse(self._call("POST", path, payload))
            except urllib.error.HTTPError as e:
                detail = _trim(e.read().decode("utf-8", "replace")) if e.fp else ""
                if e.code not in RETRYABLE_STATUS:
                    raise JudgeServerError(f"the judge server refused a request (HTTP {e.code}): {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (socket.timeout, TimeoutError):
                last = f"no answer within {self.timeout:g} s (judge.timeout)"
            except urllib.error.URLError as e:
                last = f"connection failed: {e.reason}"
            except (ConnectionError, OSError, http.client.HTTPException) as e:
                last = f"connection failed: {e!r}"
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
                last = f"malformed answer: {_trim(str(e))}"
        raise ApiFailure(f"{last} (after {self.retries + 1} attempts)")

    def _parse(self, data: Any) -> Reply:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
            usage = data.get("usage") or {}
            return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                         choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"no completion in the answer ({e!r}): {_trim(json.dumps(data)[:400])}") from None
