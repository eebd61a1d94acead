"""`adakd-judge`: compare two finished runs' answers with a pairwise LLM judge (docs/judge.md).

    adakd-judge --b sft base_url=http://127.0.0.1:8000/v1 model=Qwen/Qwen3-32B
    adakd-judge --a outputs/runs/rkl-adakd-world-<hash> --b "adakd=none" model_path=<dir> server.dtype=float32

--a / --b: a run directory, or the Hydra overrides of its `adakd-run` command ("" = the built-in default, the
default of --a); --b may also be a baseline row of run A (teacher, sft, student_init). Settings: key=value
(adakd.schema.judge.JudgeConfig; --config FILE.yaml for a file of them). Win / tie / loss are from run A's side.
Exit status: 0 done, 2 bad settings or inputs, an unreachable server or a stopped judging (the message says
which), 130 interrupted; answers received are cached either way.
"""
from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import USER_ERROR_EXIT_CODE, ConfigError, UserError
from ..io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from ..schema.judge import JudgeConfig
from .cache import JudgmentCache
from .client import JudgeClient
from .judging import Tally, ask, build_requests, pair_rows
from .prompts import APIS, PROMPT_FORMATS, load_template
from .render import log_to_wandb, plot, render_csv, render_markdown
from .runs import match, resolve
from .scoring import score
from .server import local_server

log = logging.getLogger(__name__)


def load_config(config_file: Optional[str], overrides: Sequence[str]) -> JudgeConfig:
    """The schema's defaults, then the file, then key=value overrides; a bad key or type names itself."""
    try:
        cfg = OmegaConf.structured(JudgeConfig)
        if config_file:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        obj = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, OSError) as e:
        key = getattr(e, "full_key", None)
        first = str(e).split("\n")[0]
        raise ConfigError(f"judge settings: {key + ': ' if key else ''}{first}") from None
    validate(obj)
    return obj


def validate(cfg: JudgeConfig) -> None:
    if bool(cfg.base_url) == bool(cfg.model_path):
        raise ConfigError("give exactly one of judge base_url=<OpenAI-compatible endpoint> and model_path=<model "
                          "directory or hub id> (served locally with vLLM)")
    if cfg.base_url and not re.match(r"https?://", cfg.base_url):
        raise ConfigError(f"base_url={cfg.base_url!r} must start with http:// or https://")
    if cfg.base_url and not cfg.model:
        raise ConfigError("model=<the name the server knows the judge by> is needed with base_url")
    checks = [(cfg.api in APIS, f"api={cfg.api!r}; valid: {list(APIS)}"),
              (cfg.prompt_format in PROMPT_FORMATS, f"prompt_format={cfg.prompt_format!r}; valid: {list(PROMPT_FORMATS)}"),
              (cfg.temperature >= 0, "temperature must be >= 0"), (cfg.max_tokens >= 1, "max_tokens must be >= 1"),
              (cfg.concurrency >= 1, "concurrency must be >= 1"), (cfg.timeout > 0, "timeout must be > 0"),
              (cfg.retries >= 0, "retries must be >= 0"), (cfg.backoff >= 0, "backoff must be >= 0"),
              (cfg.max_examples is None or cfg.max_examples >= 1, "max_examples must be >= 1 (or null: all)"),
              (0 < cfg.confidence < 1, "confidence must be in (0, 1)"), (cfg.bootstrap >= 0, "bootstrap must be >= 0")]
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ConfigError("judge settings: " + "; ".join(bad))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "judge"


def judge_model_name(cfg: JudgeConfig) -> str:
    return cfg.model or Path(str(cfg.model_path).rstrip("/")).name


@contextmanager
def endpoint(cfg: JudgeConfig, model: str, out_dir: Path) -> Iterator[str]:
    """The judge's base URL: the configured one, or a local vLLM server for the duration of the block."""
    if cfg.base_url:
        yield cfg.base_url
        return
    with local_server(str(cfg.model_path), model, cfg.server, out_dir / "server.log") as url:
        yield url


def compare(cfg: JudgeConfig, a_spec: str, b_spec: str) -> Dict[str, Any]:
    """Judge run A against run B; write the judgments, the summary and the table; return the summary."""
    a = resolve(a_spec, what="run A")
    b = resolve(b_spec, other=a, what="run B")
    if a.dir.resolve() == b.dir.resolve():
        raise ConfigError(f"run A and run B are the same run ({a.dir})")
    pairs = match(a, b, cfg.benchmarks, cfg.seeds, cfg.max_examples)
    template = load_template(cfg.template)
    model = judge_model_name(cfg)
    name = cfg.name or f"{a.name}-vs-{b.name}"
    root = Path(cfg.output_root)
    out_dir = root / "judge" / _safe(name)
    cache_path = Path(cfg.cache_dir or root / "judge" / "cache") / f"{_safe(model)}.jsonl"
    requests = build_requests(pairs, cfg, model, template)
    benches = list(dict.fromkeys(p.benchmark for p in pairs))
    print(f"judging {a.label} ({a.dir.name}) against {b.label} ({b.dir.name}): {len(pairs)} pairs on "
          f"{len(benches)} benchmark(s), {len(requests)} requests (both orders); judge {model}", file=sys.stderr)
    with JudgmentCache(cache_path) as cache:
        missing = sum(cache.get(r.key) is None for r in requests)
        if cache.dropped_bytes:
            print(f"cache: dropped an incomplete last line ({cache.dropped_bytes} bytes) left by a kill",
                  file=sys.stderr)
        if missing:
            with endpoint(cfg, model, out_dir) as url:
                client = JudgeClient(url, model, cfg.api, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                     retries=cfg.retries, backoff=cfg.backoff)
                client.check()
                tally = ask(requests, client, cache, cfg)
        else:
            tally = Tally(total=len(requests), cached=len(requests))
        rows = pair_rows(pairs, requests, cache, tally.failures)
    scores = score(rows, cfg.bootstrap, cfg.bootstrap_seed, cfg.confidence)
    settings = OmegaConf.to_container(OmegaConf.structured(cfg))
    summary = {"name": name, "a": {"label": a.label, "dir": str(a.dir)}, "b": {"label": b.label, "dir": str(b.dir)},
               "judge": {"model": model, "template": template.name, "template_digest": template.digest,
                         "settings": settings}, "requests": tally.as_dict(),
               "scores": {k: s.as_dict() for k, s in scores.items()}}
    atomic_write_jsonl(out_dir / "judgments.jsonl", rows)
    atomic_write_json(out_dir / "summary.json", summary)
    write_table(cfg, name, summary, scores, a, b, model, template.name)
    print(f"requests: {tally.total} needed, {tally.cached} from the cache, {tally.asked} asked ({tally.answered} "
          f"answered, {tally.failed} failed); tokens this time: {tally.prompt_tokens + tally.completion_tokens:,}",
          file=sys.stderr)
    return summary


def write_table(cfg: JudgeConfig, name: str, summary: Dict[str, Any], scores, a, b, model: str,
                template: str) -> List[Path]:
    stem = Path(cfg.output_root) / "tables" / f"{_safe(name)}-judge"
    title = f"Judge: {a.label} vs {b.label}"
    caption = (f"Pairwise judge {model} (template {template}, {cfg.api} endpoint, T = {cfg.temperature:g}, at most "
               f"{cfg.max_tokens} tokens); every pair judged in both orders, an outcome counts only when both "
               f"orders agree (else a tie). win / tie / loss: run A ({a.label}, {a.dir.name}) against run B "
               f"({b.label}, {b.dir.name}). Rates over the judged pairs, [{100 * cfg.confidence:g}% bootstrap "
               f"interval over examples, {cfg.bootstrap} resamples]. consistent: both orders gave the same outcome. "
               f"first shown: decisive verdicts that picked the answer shown first (50 % = no position bias). "
               f"Failures: pairs (requests) with an unparseable verdict or a failed API call, left out of the "
               f"rates. Examples per benchmark: {cfg.max_examples or 'all'}.")
    md = render_markdown(title, caption, scores)
    paths = [atomic_write_text(stem.with_suffix(".md"), md), atomic_write_text(stem.with_suffix(".csv"),
                                                                               render_csv(scores))]
    png = None
    try:
        png = plot(scores, stem.with_suffix(".png"), title)
    except Exception as e:   # noqa: BLE001 - the table files matter more than the chart
        log.warning("judge chart failed: %s", e)
    if png is not None:
        paths.append(png)
    print(md, end="")
    print("written: " + ", ".join(str(p) for p in paths))
    try:
        log_to_wandb(cfg.logger, stem.parent, _safe(name), {"judge": summary["judge"], "a": summary["a"],
                                                            "b": summary["b"]}, scores, png)
    except Exception as e:   # noqa: BLE001 - tracking must never cost the results
        log.warning("W&B logging of the judge table failed: %s", e)
    return paths


class Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adakd-judge", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="", help="run A: a run directory or its adakd-run overrides (default: the built-in "
                                           "default run)")
    p.add_argument("--b", required=True, help="run B: a run directory, its adakd-run overrides, or a baseline row "
                                              "of run A (teacher, sft, student_init)")
    p.add_argument("--config", default=None, help="a YAML file of judge settings (overrides come after it)")
    p.add_argument("overrides", nargs="*", help="judge settings, key=value (adakd/schema/judge.py)")
    args = p.parse_intermixed_args(argv)   # settings may come before and after --a / --b
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)   # SIGTERM unwinds like Ctrl-C: a local server is stopped
    try:
        cfg = load_config(args.config, args.overrides)
        compare(cfg, args.a, args.b)
        return 0
    except UserError as e:
        print(f"adakd-judge: error: {e}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE
    except (KeyboardInterrupt, Terminated):
        print("adakd-judge: interrupted; the answers received are cached: the same command goes on from there",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
