"""The world miniature's regime figures, from the shipped models (docs/world.md, issue 12).

(a) held-out LM loss (nats/token) of world-teacher-base and world-student on the corpus' "heldout" stream,
    packed as in pretraining (adakd.shipped.world_models);
(b) the fine-tuned teacher's mean next-token entropy (nats) on the reference responses of world-test,
    teacher-forced, response tokens only (with the cross-entropy of the reference beside it);
(c) the same for the untrained student (world-student, pretrained, not instruction-tuned);
(d) with --difficulty RUN_DIR (a plain-rkl run, e.g. `adakd-run method=rkl adakd=none`): the histogram of the
    Hellinger difficulty of every token in the telemetry rows nearest mid-training, and the share of tokens
    with s_i in [0.1, 0.5] (plots.plot_difficulty_mid; the figure goes to --figure).

    python -m adakd.shipped.world_probe [--assets DIR] [--threads N] [--samples N] [--out FILE]
                                           [--difficulty RUN_DIR [--figure PNG]]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..assemble.data import encode
from ..data.world import tasks as world_tasks
from ..data.prompts import collate_train
from ..io import atomic_write_json
from ..models import load_pretrained, load_tokenizer, verify_checksum
from ..training.forward import head_logits, hidden_at, response_positions
from ..experiment.plots import plot_difficulty_mid
from .world_models import RECIPE, compose_world, corpus_examples, lm_loss, package_assets


@torch.no_grad()
def response_entropy(model, examples: Sequence[dict], pad_id: int, batch: int = 16) -> Dict[str, float]:
    """Mean next-token entropy and cross-entropy of the reference (nats) over the response tokens."""
    model.eval()
    ent, ce, n = 0.0, 0.0, 0
    for i in range(0, len(examples), batch):
        b = collate_train(list(examples[i:i + batch]), pad_id)
        targets, mask = response_positions(b["labels"])
        logp = F.log_softmax(head_logits(model, hidden_at(model, b["input_ids"], b["attention_mask"], mask)).float(), -1)
        ent += float(-(logp.exp() * logp).sum(-1).sum())
        ce += float(F.nll_loss(logp, targets[mask], reduction="sum"))
        n += int(mask.sum())
    return {"entropy": ent / max(1, n), "ce": ce / max(1, n), "tokens": n}


def probe(assets: Path, samples: int) -> Dict[str, object]:
    cfg = compose_world([])
    models = {}
    for name in ("world-teacher-base", "world-student", "world-teacher"):
        verify_checksum(assets / name)
        models[name] = load_pretrained(str(assets / name))
    tok = load_tokenizer(str(assets / "world-teacher"))
    heldout = corpus_examples(tok, RECIPE, dict(cfg.dataset.world), "heldout")
    lm = {name: lm_loss(models[name], heldout, tok.pad_token_id) for name in ("world-teacher-base", "world-student")}
    w = world_tasks.world_for(dict(cfg.dataset.world))
    test = world_tasks.generate(w, "world-test", samples, int(cfg.dataset.seed))
    enc = encode(test, tok, cfg.dataset)
    resp = {name: response_entropy(models[name], enc, tok.pad_token_id) for name in ("world-teacher", "world-student")}
    return {"assets": str(assets), "heldout_lm_loss": lm, "heldout_tokens": sum(len(e["input_ids"]) - 1 for e in heldout),
            "world_test_samples": len(enc), "world_test_response": resp}


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=None, help="the three model directories (default: the package's assets)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=200, help="world-test examples (first N)")
    ap.add_argument("--out", default="outputs/world_probe.json")
    ap.add_argument("--difficulty", default=None, metavar="RUN_DIR",
                    help="a plain-rkl run directory: its mid-training difficulty histogram")
    ap.add_argument("--figure", default="outputs/world-difficulty-mid.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = probe(Path(args.assets) if args.assets else package_assets(), args.samples)
    if args.difficulty:
        r["difficulty_mid"] = plot_difficulty_mid(args.difficulty, args.figure)
    print(f"{'model':<22}{'figure':<44}{'nats':>8}")
    for name, loss in r["heldout_lm_loss"].items():
        print(f"{name:<22}{'held-out LM loss (ppl %.3f)' % math.exp(loss):<44}{loss:8.4f}")
    for name, s in r["world_test_response"].items():
        print(f"{name:<22}{'world-test response entropy (%d tokens)' % s['tokens']:<44}{s['entropy']:8.4f}")
        print(f"{name:<22}{'world-test reference CE':<44}{s['ce']:8.4f}")
    d = r.get("difficulty_mid")
    if d:
        print(f"difficulty at steps {d['steps']} of {d['total_steps']} ({d['tokens']} tokens): "
              f"{d['below']:.1%} < 0.1, {d['inside']:.1%} in [0.1, 0.5], {d['above']:.1%} > 0.5, "
              f"median {d['median']:.3f} -> {d['figure']}")
    atomic_write_json(Path(args.out), r)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
