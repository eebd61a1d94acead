"""The run's tokenizer: a pretrained one (model.tokenizer, default the teacher's), the one shipped with a
built-in teacher, or a byte-level BPE trained on the generated corpus and cached; and the check that every
pretrained model of the pair uses it (token-level KD needs one vocabulary)."""
from __future__ import annotations

from typing import Optional, Sequence

from omegaconf import DictConfig

from ..data import synthetic
from ..io import build_lock
from ..models import check_same_tokenizer, load_tokenizer, train_bpe_tokenizer
from .context import Context
from .data import RunData
from .identity import model_path, tokenizer_dir
from .teacher import shipped_teacher

GENERATED_TOKENIZER = "synthetic"   # model.tokenizer: train a BPE on the generated dataset's corpus


def get_tokenizer(cfg: DictConfig, data: RunData, ctx: Context, roles: Optional[Sequence[str]] = None,
                  teacher_key: Optional[str] = None):
    """The run's tokenizer, after checking that every pretrained model the task loads uses it. `teacher_key`:
    identity.teacher_key(cfg) where the caller holds it (a job's plan)."""
    tok, path, name = _run_tokenizer(cfg, data, ctx, teacher_key)
    check_pair_tokenizers(cfg, tok, path, ctx, roles, name)
    return tok


def _run_tokenizer(cfg: DictConfig, data: RunData, ctx: Context, teacher_key: Optional[str]):
    """(tokenizer, its directory, how a message names it)."""
    m = cfg.model
    if m.tokenizer != GENERATED_TOKENIZER:
        own = m.tokenizer in ("", "teacher")
        path = model_path((m.teacher.path or "") if own else m.tokenizer)
        tok = ctx.get(f"tok:{path}", lambda: load_tokenizer(path, m.teacher.trust_remote_code))
        return tok, path, (f"the teacher (model.teacher.path={m.teacher.path})" if own
                           else f"model.tokenizer={m.tokenizer}")
    asset = shipped_teacher(cfg, teacher_key)
    if asset is not None:
        return (ctx.get(f"tok:{asset}", lambda: load_tokenizer(str(asset))), str(asset),
                f"the shipped teacher's tokenizer ({m.teacher_asset})")
    out = tokenizer_dir(cfg)

    def build():
        if (out / "tokenizer.json").exists():
            return load_tokenizer(str(out))
        # A shared cache: two commands started together must not both write it (the second would move the
        # first's directory away under it), so it is built under its lock, and found built by the waiter.
        with build_lock(out, "run tokenizer"):
            if (out / "tokenizer.json").exists():
                return load_tokenizer(str(out))
            # prompts and references of the generated training split (any generated dataset)
            return train_bpe_tokenizer(synthetic.corpus(data.train), m.tokenizer_vocab, out)
    return (ctx.get(f"tok:{out}", build), str(out),
            f"the run's tokenizer (model.tokenizer={GENERATED_TOKENIZER}: a BPE trained on the training data)")


def check_pair_tokenizers(cfg: DictConfig, tokenizer, tokenizer_path: str, ctx: Context,
                          roles: Optional[Sequence[str]] = None, tokenizer_name: Optional[str] = None) -> None:
    """A pretrained teacher or student whose own tokenizer differs from the run's is refused here, whatever the
    run's tokenizer is, before any model is loaded (tokenizers load in a second). `roles`: the models the
    run's task loads (default both)."""
    for role in roles or ("teacher", "student"):
        spec = cfg.model[role]
        path = model_path(spec.path or "")
        if spec.source != "pretrained" or not spec.path or path == str(tokenizer_path):
            continue
        own = ctx.get(f"tok:{path}", lambda p=path, s=spec: load_tokenizer(p, s.trust_remote_code))
        check_same_tokenizer(tokenizer, own, run_name=tokenizer_name or f"the run's tokenizer ({tokenizer_path})",
                             own_name=f"model.{role}.path={spec.path}")
