"""The instruction-following benchmarks of the MiniLLM / DistiLLM / AdaKD line of work.

Files are JSON lines in the processed form of ``../shared/data`` (see its README): ``instruction``,
``input`` (may be empty or absent), ``output`` (a string, or a list of references in sinst) and the
rendered ``prompt``. The layout under the data root is ``<benchmark>/<split>.jsonl``.

Where the data comes from, in order: the ``root`` argument (``dataset.root`` in the config), the
environment variable ``ADAKD_DATA_DIR``, or, only when ``hub_repo`` is given, a Hugging Face dataset
repository with the same layout. Bad records are refused with the file and the line number, because
a silently skipped test example changes the number that is compared with the paper's.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .example import Example
from .prompts import render_prompt

ENV_DATA_DIR = "ADAKD_DATA_DIR"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    files: Mapping[str, str]              # split -> path relative to the data root
    expected: Mapping[str, int]           # split -> size in the protocol (a mismatch warns)
    description: str
    missing_hint: str = ""                # said when the file is not there
    multi_reference: bool = False


_UINST_HINT = (
    "The UnNI benchmark (Unnatural Instructions, 10,000 test samples with responses of 11+ words) is not "
    "available offline and is not part of ../shared/data. To obtain it, download MiniLLM's processed "
    "Unnatural Instructions data on a machine with internet (the Hugging Face dataset repository "
    "MiniLLM/uinst, e.g. `huggingface-cli download MiniLLM/uinst --repo-type dataset --local-dir DIR`), "
    "take its evaluation file of responses with 11+ words (MiniLLM's `11_` subset, 10,000 samples) and "
    "save it as {path} (JSON lines with instruction, input, output, prompt), or set dataset.hub_repo=<a dataset "
    "repository laid out as <benchmark>/<split>.jsonl>. `uinst-short` is a different, short-answer slice "
    "and is never used in its place; ask for it by its own name for smoke runs only."
)

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("dolly", {"train": "dolly/train.jsonl", "dev": "dolly/dev.jsonl",
                                "test": "dolly/test.jsonl"},
                      {"train": 11435, "dev": 1000, "test": 500},
                      "databricks-dolly-15k as split by MiniLLM (train / 1k validation / 500 test)"),
        BenchmarkSpec("self-inst", {"test": "self-inst/test.jsonl"}, {"test": 242},
                      "Self-Instruct user-oriented instructions (MiniLLM's file)"),
        BenchmarkSpec("vicuna", {"test": "vicuna/test.jsonl"}, {"test": 80},
                      "Vicuna 80 questions with MiniLLM's reference answers"),
        BenchmarkSpec("sinst", {"test": "sinst/test.jsonl"}, {"test": 1694},
                      "Super-NaturalInstructions test tasks, responses of 11+ words", multi_reference=True),
        BenchmarkSpec("uinst", {"test": "uinst/test.jsonl"}, {"test": 10000},
                      "Unnatural Instructions, 10k samples with responses of 11+ words",
                      missing_hint=_UINST_HINT),
        BenchmarkSpec("uinst-short", {"test": "uinst-short/test.jsonl"}, {"test": 1050},
                      "short-answer slice of Unnatural Instructions: smoke/proxy only, "
                      "NOT the UnNI benchmark"),
    ]
}


@dataclass
class SourceFile:
    """Provenance of one loaded file, shared by all its examples (``example.meta["source"]``)."""
    benchmark: str
    split: str
    path: str
    sha256: str
    n: int = 0
    prompt_mismatches: int = 0   # lines whose `prompt` differs from the rendered template

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256_cached(path: str | os.PathLike) -> str:
    """file_sha256, computed once per (path, size, modification time) in a process (a sweep hashes the same
    files for every row)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data directory: ``root`` if given, else ``$ADAKD_DATA_DIR``; an error says how to set it."""
    origin = "root argument (dataset.root)"
    if root is None or str(root) == "":
        root, origin = os.environ.get(ENV_DATA_DIR) or None, f"${ENV_DATA_DIR}"
    if root is None:
        raise DataError(
            "no benchmark data directory: pass root=... (config key dataset.root) or "
            f"`export {ENV_DATA_DIR}=/path/to/data`, a folder laid out as <benchmark>/<split>.jsonl like "
            "../shared/data; on a machine with internet a Hugging Face dataset repository with that layout "
            "can be given instead (dataset.hub_repo=<owner/name>)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"benchmark data directory {str(path)!r} (from the {origin}) does not exist")
    return path


def get_spec(name: str, split: str = "test") -> BenchmarkSpec:
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if split not in spec.files:
        raise DataError(f"benchmark {name!r} has no split {split!r}; it has: {', '.join(spec.files)}")
    return spec


def benchmark_file(name: str, root: str | os.PathLike | None = None, split: str = "test", *,
                   hub_repo: str | None = None) -> Path:
    """Local path of a benchmark file, downloading it from ``hub_repo`` only when no root is set."""
    spec = get_spec(name, split)
    rel = spec.files[split]
    if root is None and not os.environ.get(ENV_DATA_DIR) and hub_repo:
        return _download(hub_repo, rel, spec)
    path = resolve_data_root(root) / rel
    if path.exists() and not path.is_file():   # a directory, a FIFO (reading it would block), a device
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise DataError(f"benchmark {name!r} ({split}): {path} is {kind}; a JSON-lines file is expected there")
    if not path.is_file():
        hint = spec.missing_hint.format(path=path) if spec.missing_hint else (
            f"expected the layout of ../shared/data under the data root ({rel})")
        raise DataError(f"benchmark {name!r} ({split}) not found: {path}. {hint}")
    return path


def _download(repo: str, rel: str, spec: BenchmarkSpec) -> Path:
    try:
        from huggingface_hub import hf_hub_download   # only a download needs it (optional: offline use)
        return Path(hf_hub_download(repo_id=repo, filename=rel, repo_type="dataset"))
    except Exception as e:  # offline, missing file, no access: all end the same way for the user
        hint = spec.missing_hint.format(path=f"<data root>/{rel}") if spec.missing_hint else ""
        raise DataError(f"could not download {rel} from the dataset repository {repo!r}: {e}. {hint}") from e


def _references(output: Any, where: str) -> list[str]:
    refs = output if isinstance(output, list) else [output]
    if not refs:
        raise DataError(f"{where}: 'output' is an empty list (no reference)")
    for k, r in enumerate(refs):
        if not isinstance(r, str):
            raise DataError(f"{where}: reference {k} is {type(r).__name__}, not a string")
        if not r.strip():
            raise DataError(f"{where}: reference {k} is empty")
    return list(refs)


def _parse(record: Any, where: str, require_prompt: bool) -> tuple[str, str, str | None, list[str]]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    required = ("instruction", "output", "prompt") if require_prompt else ("instruction", "output")
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    instruction, inp, prompt = record["instruction"], record.get("input", ""), record.get("prompt")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: 'instruction' must be a non-empty string")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: 'input' must be a string, got {type(inp).__name__}")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    return instruction, inp, prompt, _references(record["output"], where)


def read_examples(path: str | os.PathLike, *, benchmark: str = "", split: str = "test",
                  require_prompt: bool = True) -> list[Example]:
    """Parse and validate one JSON-lines benchmark file; every error names the file and the line.

    A record's own ``prompt`` is what the model sees. When it differs from the Alpaca template
    rendered from ``instruction``/``input`` the file's prompt is kept (the processed files define the
    benchmark) and the lines are counted in ``meta["source"].prompt_mismatches`` with one warning
    per file. Without a ``prompt`` field (only allowed with ``require_prompt=False``) it is rendered.
    """
    path = Path(path)
    try:
        return _read_examples(path, benchmark, split, require_prompt)
    except OSError as e:   # unreadable (permissions, an I/O error): the file, not a traceback
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read_examples(path: Path, benchmark: str, split: str, require_prompt: bool) -> list[Example]:
    source = SourceFile(benchmark=benchmark or path.parent.name, split=split, path=str(path),
                        sha256=file_sha256_cached(path))
    examples: list[Example] = []
    first_mismatch = None
    with open(path, "rb") as f:   # decoded line by line, so a bad byte is reported with its line
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                continue   # a trailing blank line is not a record
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg.removesuffix(' at')}, column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply to be a record") from None
            except ValueError as e:   # e.g. an integer too long to convert
                raise DataError(f"{where}: invalid JSON ({e})") from None
            instruction, inp, prompt, refs = _parse(record, where, require_prompt)
            rendered = render_prompt(instruction, inp)
            if prompt is None:
                prompt = rendered
            elif prompt != rendered:
                source.prompt_mismatches += 1
                first_mismatch = first_mismatch or lineno
            meta: dict[str, Any] = {"source": source, "line": lineno}
            for key in ("topic", "category"):
                if key in record:
                    meta[key] = record[key]
            examples.append(Example(instruction=instruction, input=inp, prompt=prompt, references=refs,
                                    id=f"{source.benchmark}:{split}:{lineno}", meta=meta))
    if not examples:
        raise DataError(f"{path}: the file is empty (no records)")
    source.n = len(examples)
    if source.prompt_mismatches:
        warnings.warn(f"{path}: {source.prompt_mismatches} of {source.n} prompts differ from the Alpaca "
                      f"template (first at line {first_mismatch}); the file's prompts are used",
                      stacklevel=2)
    return examples


def load_benchmark(name: str, root: str | os.PathLike | None = None, split: str = "test", *,
                   hub_repo: str | None = None, require_prompt: bool = True) -> list[Example]:
    """Examples of one benchmark split; see the module docstring for where the file is looked up."""
    path = benchmark_file(name, root, split, hub_repo=hub_repo)
    examples = read_examples(path, benchmark=name, split=split, require_prompt=require_prompt)
    expected = BENCHMARKS[name].expected.get(split)
    if expected is not None and len(examples) != expected:
        warnings.warn(f"{path}: {len(examples)} examples, the protocol's {name} {split} set has {expected}",
                      stacklevel=2)
    return examples


def source_files(examples: list[Example]) -> list[dict[str, Any]]:
    """The distinct source files (path, sha256, n, prompt mismatches) behind a list of examples."""
    seen: dict[int, SourceFile] = {}
    for ex in examples:
        src = ex.meta.get("source")
        if isinstance(src, SourceFile):
            seen.setdefault(id(src), src)
    return [s.as_dict() for s in seen.values()]
