"""The run's data: training and dev splits (generated or read from files), the evaluation benchmarks, and
the training sequences encoded with the run's tokenizer.

Reading happens first in a run (experiment.runner): a malformed file fails with its path and line before any
model is built.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from .. import runinfo
from ..data import synthetic
from ..data.world import tasks as world_tasks
from ..data.benchmarks import BENCHMARKS, load_benchmark, source_files
from ..data.example import Example
from ..data.prompts import apply_chat_template, encode_example
from ..errors import ConfigError
from .context import Context

log = logging.getLogger(__name__)

GENERATED = ("synthetic", "world")   # datasets made by a generator from the config alone


@dataclass
class RunData:
    train: List[Example]
    dev: List[Example]
    test: List[Example]                  # the generated test split (empty for file datasets)
    files: Dict[str, Any]                # provenance of the training data
    benchmarks: Dict[str, List[Example]] = field(default_factory=dict)   # generated benchmarks (dataset=world)


def build_train_data(ds: DictConfig) -> RunData:
    """The training, dev and (generated) test splits of the dataset section."""
    if ds.name == "synthetic":
        tasks = list(ds.tasks) if ds.tasks else None
        return RunData(train=synthetic.generate("train", ds.n_train, ds.seed, tasks),
                       dev=synthetic.generate("dev", ds.n_dev, ds.seed, tasks),
                       test=synthetic.generate("test", ds.n_test, ds.seed, tasks),
                       files={"synthetic": {"n_train": ds.n_train, "seed": ds.seed, "tasks": tasks}})
    if ds.name == "world":
        spec = ds.get("world")
        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec or {})
        g = world_tasks.generate_all(spec, int(ds.n_train), int(ds.n_dev), int(ds.n_test), int(ds.seed))
        return RunData(train=g["train"], dev=g["dev"], test=g["test"], files=g["files"], benchmarks=g["benchmarks"])
    train = load_benchmark(ds.name, ds.root, split=ds.train_split, hub_repo=ds.hub_repo)
    if "dev" in BENCHMARKS[ds.name].files:   # a dataset with a dev split: its file must be there and valid
        dev = load_benchmark(ds.name, ds.root, split="dev", hub_repo=ds.hub_repo)
    else:                                     # none: hold out the last val_size training samples
        train, dev = train[:-ds.val_size], train[-ds.val_size:]
    if ds.max_train_samples:
        train = train[: ds.max_train_samples]
    return RunData(train=train, dev=dev, test=[], files={"train": source_files(train), "dev": source_files(dev)})


def run_data(ds: DictConfig, ctx: Context) -> RunData:
    """The run's data (from the dataset section), built once per dataset config in a process."""
    key = "data:" + runinfo.config_hash(OmegaConf.to_container(ds, resolve=True))
    return ctx.get(key, lambda: build_train_data(ds))


def build_benchmarks(cfg: DictConfig, data: RunData) -> Tuple[Dict[str, List[Example]], Dict[str, Any]]:
    """The evaluation sets named in eval.benchmarks, each cut to eval.max_samples (the first N), and where
    each came from."""
    out, files = {}, {}
    for name in cfg.eval.benchmarks:
        if name == "synthetic":
            if cfg.dataset.name != "synthetic":
                raise ConfigError("eval.benchmarks has 'synthetic' but dataset is not synthetic")
            exs = data.test
            files[name] = {"generator": "adakd.data.synthetic", "n_test": len(exs), "seed": cfg.dataset.seed}
        elif name in data.benchmarks:
            exs = data.benchmarks[name]
            files[name] = data.files.get(name, {})
        elif name in world_tasks.BENCHMARKS:
            raise ConfigError(f"eval.benchmarks has {name!r}, a benchmark of dataset=world, but dataset is "
                              f"{cfg.dataset.name}")
        else:
            exs = load_benchmark(name, cfg.dataset.root, hub_repo=cfg.dataset.hub_repo)
            files[name] = source_files(exs)
        if cfg.eval.max_samples:
            exs = exs[: cfg.eval.max_samples]
        out[name] = exs
    return out, files


def encode(examples: Sequence[Example], tokenizer, ds) -> List[dict]:
    """Examples as training sequences (prompt + first reference), over-long ones dropped or cut
    (dataset.overlong)."""
    encoded, dropped = [], 0
    for ex in examples:
        prompt = apply_chat_template(tokenizer, ex.prompt) if ds.chat_template else ex.prompt
        e = encode_example(tokenizer, prompt, ex.references[0], max_prompt_len=ds.max_prompt_len,
                           max_len=ds.max_len, overlong=ds.overlong, add_special_tokens=not ds.chat_template)
        if e is None:
            dropped += 1
        else:
            encoded.append(e)
    if dropped:
        log.info("dropped %d of %d samples over the length limits (dataset.overlong=%s)",
                 dropped, len(examples), ds.overlong)
    return encoded


def encoded_train(ds: DictConfig, tokenizer, data: RunData, ctx: Context) -> List[dict]:
    """The training split as training sequences (the dataset section's length limits), once per process."""
    def build():
        encoded = encode(data.train, tokenizer, ds)
        if not encoded:
            raise ConfigError("no training sample fits the length limits (dataset.max_prompt_len / max_len)")
        return encoded
    return ctx.get(f"enc:{id(tokenizer)}:{id(data)}", build)


def encoded_dev(ds: DictConfig, tokenizer, data: RunData, ctx: Context, n: int | None = None) -> List[dict]:
    """The first `n` dev examples (all: None) as training sequences."""
    examples = data.dev if n is None else data.dev[:n]
    return ctx.get(f"enc-dev:{id(tokenizer)}:{id(data)}:{n}", lambda: encode(examples, tokenizer, ds))


def usable_dev(cfg: DictConfig, tokenizer, data: RunData, ctx: Context) -> List[dict]:
    """The dev sequences that dev validation scores (those within the length limits). A run that validates
    (train.val_every != 0) on a dev split of which none fits is refused: its val_ce and val_kd would be NaN
    and train.select=best_dev would select on them. Called before any model is loaded (experiment.runner)."""
    encoded = encoded_dev(cfg.dataset, tokenizer, data, ctx)
    if data.dev and not encoded and cfg.train.val_every != 0:
        ds = cfg.dataset
        raise ConfigError(f"dev validation needs at least one dev example within the length limits, and none of "
                          f"the {len(data.dev)} dev records fits dataset.max_prompt_len={ds.max_prompt_len} / "
                          f"dataset.max_len={ds.max_len} (dataset.overlong={ds.overlong}): raise the limits, or "
                          f"turn validation off with train.val_every=0")
    return encoded
