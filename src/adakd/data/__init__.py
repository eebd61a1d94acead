"""Data layer: benchmark loading, prompt rendering, tokenisation and collation."""
from .benchmarks import (
    BENCHMARKS,
    DataError,
    file_sha256,
    load_benchmark,
    read_examples,
    resolve_data_root,
    source_files,
)
from .example import Example
from .prompts import apply_chat_template, collate_train, encode_example, render_prompt

__all__ = [
    "BENCHMARKS",
    "DataError",
    "Example",
    "apply_chat_template",
    "collate_train",
    "encode_example",
    "file_sha256",
    "load_benchmark",
    "read_examples",
    "render_prompt",
    "resolve_data_root",
    "source_files",
]
