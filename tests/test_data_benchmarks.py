"""Benchmark loading: sizes of the protocol, provenance, and refusal of bad data with file and line."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from adakd.data import BENCHMARKS, DataError, file_sha256, load_benchmark, resolve_data_root, source_files
from adakd.data.prompts import render_prompt

# small hand-made files under registry names: the size warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:.*examples, the protocol's")

README_SHA256 = {
    "dolly/test.jsonl": "f2624572fdde0bec8759e63fecefdc5e38679816464cd57ef563612ccc6acc06",
    "vicuna/test.jsonl": "04f5fabc7e2660a778ef86f7d2779f69a8f108b892074517566b7d714a269c3a",
}


@pytest.fixture(scope="module")
def root(data_root) -> Path:   # data_root: conftest.py (../shared/data or $ADAKD_DATA_DIR, else skip)
    return data_root


@pytest.mark.parametrize("name,split,n", [("dolly", "test", 500), ("self-inst", "test", 242),
                                          ("vicuna", "test", 80), ("sinst", "test", 1694),
                                          ("dolly", "dev", 1000), ("uinst-short", "test", 1050)])
def test_protocol_sizes(root, name, split, n):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the shipped files match the template and the sizes
        examples = load_benchmark(name, root, split)
    assert len(examples) == n
    assert all(ex.references and all(isinstance(r, str) and r for r in ex.references) for ex in examples)
    assert len({ex.id for ex in examples}) == n


def test_sinst_has_several_references(root):
    examples = load_benchmark("sinst", root)
    multi = [ex for ex in examples if len(ex.references) > 1]
    assert len(multi) > 100
    assert max(len(ex.references) for ex in examples) >= 5


def test_vicuna_has_no_input_and_meta(root):
    ex = load_benchmark("vicuna", root)[0]
    assert ex.input == "" and ex.prompt == render_prompt(ex.instruction)
    assert ex.meta["line"] == 1 and "category" in ex.meta
    assert ex.id == "vicuna:test:1"


def test_file_provenance(root):
    for rel, sha in README_SHA256.items():
        assert file_sha256(root / rel) == sha
    examples = load_benchmark("dolly", root)
    (src,) = source_files(examples)
    assert src["sha256"] == README_SHA256["dolly/test.jsonl"]
    assert src["n"] == 500 and src["prompt_mismatches"] == 0 and src["path"].endswith("dolly/test.jsonl")


def test_root_from_environment(root, monkeypatch):
    monkeypatch.setenv("ADAKD_DATA_DIR", str(root))
    assert resolve_data_root() == root
    assert len(load_benchmark("vicuna")) == 80


def test_no_root_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("ADAKD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="ADAKD_DATA_DIR"):
        load_benchmark("vicuna")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_root("/nonexistent/adakd-data")


def test_unknown_names(root):
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("alpaca", root)
    with pytest.raises(DataError, match="no split 'train'"):
        load_benchmark("vicuna", root, "train")


def test_uinst_missing_is_explained_and_never_substituted(root, tmp_path):
    # a data root holding uinst-short but not the real UnNI split: uinst stays an error
    (tmp_path / "uinst-short").mkdir()
    (tmp_path / "uinst-short" / "test.jsonl").write_text((root / "uinst-short" / "test.jsonl").read_text())
    with pytest.raises(DataError) as err:
        load_benchmark("uinst", tmp_path)
    msg = str(err.value)
    assert "not available offline" in msg and str(tmp_path / "uinst" / "test.jsonl") in msg
    assert "MiniLLM/uinst" in msg and "never used in its place" in msg
    assert len(load_benchmark("uinst-short", tmp_path)) == 1050     # only by its own name
    assert "NOT the UnNI benchmark" in BENCHMARKS["uinst-short"].description


def test_uinst_read_when_present(tmp_path):
    _write(tmp_path / "uinst" / "test.jsonl", [_rec(i) for i in range(3)])
    with pytest.warns(UserWarning, match="protocol's uinst test set has 10000"):
        examples = load_benchmark("uinst", tmp_path)
    assert [ex.id for ex in examples] == ["uinst:test:1", "uinst:test:2", "uinst:test:3"]


def test_hub_fallback_only_without_root(tmp_path, monkeypatch):
    _write(tmp_path / "dl.jsonl", [_rec(0)])
    calls = []

    def fake_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(tmp_path / "dl.jsonl")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv("ADAKD_DATA_DIR", raising=False)
    assert len(load_benchmark("self-inst", hub_repo="someone/benchmarks")) == 1
    assert calls == [("someone/benchmarks", "self-inst/test.jsonl", "dataset")]


# ---------------------------------------------------------------- malformed files

def _rec(i: int, **over):
    rec = {"instruction": f"Say {i}.", "input": "", "output": f"Answer {i}.",
           "prompt": render_prompt(f"Say {i}.")}
    rec.update(over)
    return rec


def _write(path: Path, records, raw_lines=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    for lineno, text in (raw_lines or {}).items():
        lines.insert(lineno - 1, text)
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def _load(tmp_path, **kw):
    return load_benchmark("vicuna", tmp_path, **kw)


def test_broken_json_names_file_and_line(tmp_path):
    _write(tmp_path / "vicuna" / "test.jsonl", [_rec(0), _rec(1), _rec(3)], raw_lines={3: '{"instruction": '})
    with pytest.raises(DataError, match=r"vicuna/test\.jsonl, line 3: invalid JSON"):
        _load(tmp_path)


@pytest.mark.parametrize("bad,pattern", [
    ({"output": None}, "reference 0 is NoneType"),
    ({"output": []}, "empty list"),
    ({"output": ["ok", "  "]}, "reference 1 is empty"),
    ({"output": ""}, "reference 0 is empty"),
    ({"instruction": ""}, "'instruction' must be a non-empty string"),
    ({"input": 3}, "'input' must be a string"),
])
def test_bad_fields(tmp_path, bad, pattern):
    _write(tmp_path / "vicuna" / "test.jsonl", [_rec(0), _rec(1, **bad)])
    with pytest.raises(DataError, match=rf"test\.jsonl, line 2: .*{pattern}"):
        _load(tmp_path)


@pytest.mark.parametrize("field", ["instruction", "output", "prompt"])
def test_missing_field(tmp_path, field):
    rec = _rec(1)
    del rec[field]
    _write(tmp_path / "vicuna" / "test.jsonl", [_rec(0), rec])
    with pytest.raises(DataError, match=rf"line 2: missing field\(s\) {field}"):
        _load(tmp_path)


def test_prompt_rendered_when_not_required(tmp_path):
    rec = _rec(1, input="context")
    del rec["prompt"]
    _write(tmp_path / "vicuna" / "test.jsonl", [rec])
    (ex,) = _load(tmp_path, require_prompt=False)
    assert ex.prompt == render_prompt("Say 1.", "context")


def test_empty_file_and_non_object(tmp_path):
    _write(tmp_path / "vicuna" / "test.jsonl", [])
    with pytest.raises(DataError, match="file is empty"):
        _load(tmp_path)
    _write(tmp_path / "vicuna" / "test.jsonl", [_rec(0), ["a list"]])
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        _load(tmp_path)


def test_blank_lines_are_skipped_and_lines_still_counted(tmp_path):
    _write(tmp_path / "vicuna" / "test.jsonl", [_rec(0), _rec(1)], raw_lines={2: "   "})
    with pytest.warns(UserWarning, match="has 80"):
        examples = _load(tmp_path)
    assert [ex.meta["line"] for ex in examples] == [1, 3]


def test_prompt_mismatch_kept_counted_and_warned_once(tmp_path):
    recs = [_rec(0), _rec(1, prompt="Q: Say 1.\nA:"), _rec(2, prompt="Q: Say 2.\nA:")]
    _write(tmp_path / "vicuna" / "test.jsonl", recs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = _load(tmp_path)
    mismatch = [w for w in caught if "differ from the Alpaca template" in str(w.message)]
    (message,) = [str(w.message) for w in mismatch]
    assert "2 of 3" in message and "line 2" in message
    assert examples[1].prompt == "Q: Say 1.\nA:"
    assert examples[0].meta["source"].prompt_mismatches == 2
