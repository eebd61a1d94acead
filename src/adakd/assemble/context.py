"""What one process builds once and reuses across the runs of a command or a sweep (data, tokenizer,
teacher, encoded sequences): a keyed memo, nothing more."""
from __future__ import annotations

from typing import Any, Callable, Dict


class Context:
    def __init__(self) -> None:
        self._cache: Dict[str, Any] = {}

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
