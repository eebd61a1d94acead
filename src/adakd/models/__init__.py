"""Models and tokenizers: loading (hub id or local directory), building from a config, saving with a
checksum, pruning into a student, LoRA, and converting the offline SmolLM2 teacher (gguf)."""
from .loading import (ModelLoadError, check_local_or_hub, check_model_dir, count_params, lm_parts, load_pretrained,
                      model_from_arch)
from .storage import file_sha256, save_dir_atomically, save_model, verify_checksum
from .tokenizers import EOS, check_same_tokenizer, load_tokenizer, tokenizer_fingerprint, train_bpe_tokenizer

__all__ = [
    "EOS", "ModelLoadError", "check_local_or_hub", "check_model_dir", "check_same_tokenizer", "count_params", "file_sha256", "lm_parts",
    "load_pretrained", "load_tokenizer", "model_from_arch", "save_dir_atomically", "save_model",
    "tokenizer_fingerprint", "train_bpe_tokenizer", "verify_checksum",
]
