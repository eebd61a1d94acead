"""The run's tokenizer: a pretrained one (model.tokenizer, default the teacher's), the one shipped with a
built-in teacher, or a byte-level BPE trained on the generated corpus and cached; and the check that every
pretrained model of the pair uses it (token-level KD needs one vocabulary)."""
from __future__ import annotations

from typing import Optional, Sequence

from omegaconf import DictConfig

from ..data import synthetic
from ..models import check_same_tokenizer, load_tokenizer, train_bpe_tokenizer
from ..models.loading import ModelLoadError
from .context import Context
from .data import RunData
from .identity import model_path, tokenizer_dir
from .teacher import shipped_teacher

GENERATED_TOKENIZER = "synthetic"   # model.tokenizer: train a BPE on the generated dataset's corpus


def get_tokenizer(cfg: DictConfig, data: RunData, ctx: Context, roles: Optional[Sequence[str]] = None):
    m = cfg.model
    if m.tokenizer != GENERATED_TOKENIZER:
        path = model_path(m.tokenizer if m.tokenizer not in ("", "teacher") else (m.teacher.path or ""))
        tok = ctx.get(f"tok:{path}", lambda: load_tokenizer(path, m.teacher.trust_remote_code))
        check_pair_tokenizers(cfg, tok, path, ctx, roles)
        return tok
    asset = shipped_teacher(cfg)
    if asset is not None:
        return ctx.get(f"tok:{asset}", lambda: load_tokenizer(str(asset)))
    out = tokenizer_dir(cfg)

    def build():
        if (out / "tokenizer.json").exists():
            return load_tokenizer(str(out))
        # prompts and references of the generated training split (any generated dataset)
        return train_bpe_tokenizer(synthetic.corpus(data.train), m.tokenizer_vocab, out)
    return ctx.get(f"tok:{out}", build)


def check_pair_tokenizers(cfg: DictConfig, tokenizer, tokenizer_path: str, ctx: Context,
                          roles: Optional[Sequence[str]] = None) -> None:
    """A pretrained teacher or student whose own tokenizer differs from the run's is refused here, before any
    model is loaded (tokenizers load in a second). `roles`: the models the run's task loads (default both)."""
    for role in roles or ("teacher", "student"):
        spec = cfg.model[role]
        path = model_path(spec.path or "")
        if spec.source != "pretrained" or not spec.path or path == str(tokenizer_path):
            continue
        own = ctx.get(f"tok:{path}", lambda p=path, s=spec: load_tokenizer(p, s.trust_remote_code))
        try:
            check_same_tokenizer(tokenizer, own)
        except ModelLoadError as e:
            raise ModelLoadError(f"model.{role}.path={spec.path}: its tokenizer is not the run's tokenizer "
                                 f"({tokenizer_path}): {e}") from None
