"""Plots of a run and of a table (PNG, matplotlib's Agg canvas: no display, no global pyplot state).

`plot_run(run_dir)` reads the run's local files only:
- train_log.jsonl (one row per optimizer step: loss, lr, ratio, kd_loss, ce, diff_kept_mean, ...)
  -> training.png (loss and learning rate), latf_ratio.png (the token ratio r over steps),
- telemetry.jsonl (every adakd.telemetry_every steps: per-token tau of the kept tokens, difficulty and
  kept flag of every valid token) -> tau_hist.png (like the paper's Figure 4: the temperatures of hard and
  easy tokens early and late in training; hard / easy = difficulty above / below the median of the kept
  tokens at that step) and difficulty.png (kept vs dropped difficulty over steps and late in training).
Missing files or keys only mean fewer plots; nothing here may fail a run.
`plot_table(...)` draws a table's averages as bars with the std over seeds as error bars.
"""
from __future__ import annotations

import io
import json
import logging
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io import atomic_write_bytes

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
EARLY_LATE_FRAC = 0.2     # telemetry rows pooled as "early" / "late": the first / last 20% of them (>= 1 row)
HARD, EASY, KEPT, DROPPED = "#c0392b", "#2874a6", "#1e8449", "#999999"


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # heavy (~1 s): loaded where a plot is drawn
    from matplotlib.figure import Figure   # heavy, as above
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """Rows of a JSONL file; a line cut by a kill (the last one) is ignored."""
    rows: List[Dict[str, Any]] = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _series(rows: Sequence[Dict[str, Any]], key: str) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r.get("step", len(xs) + 1))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: List[float], frac: float = 0.02) -> List[float]:
    """Exponential moving average over ~frac of the run: readable curves for noisy per-step losses."""
    if len(ys) < 20:
        return ys
    beta = 1.0 - 1.0 / max(2.0, frac * len(ys))
    out, m = [], ys[0]
    for y in ys:
        m = beta * m + (1 - beta) * y
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------------ a run
def plot_run(run_dir: str | Path) -> Dict[str, Path]:
    """Write the run's plots under run_dir/plots/; returns {name: png path} for those it could draw."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    train = read_jsonl(run_dir / "train_log.jsonl")
    tele = read_jsonl(run_dir / "telemetry.jsonl")
    title = run_dir.name
    made: Dict[str, Path] = {}
    for name, fn, data in (("training", _plot_training, train), ("latf_ratio", _plot_ratio, train),
                           ("tau_hist", _plot_tau, tele), ("difficulty", _plot_difficulty, (train, tele)),
                           ("validation", _plot_validation, train)):
        try:
            fig = fn(data, title)
        except Exception as e:   # noqa: BLE001 - a plot must never cost a run its results
            log.warning("plot %s of %s failed: %s", name, run_dir, e)
            continue
        if fig is not None:
            made[name] = _save(fig, out / f"{name}.png")
    return made


def _plot_training(rows, title):
    xs, loss = _series(rows, "loss")
    if not xs:
        return None
    fig, (ax1, ax2) = _figure(10, 3.6, 2)
    ax1.plot(xs, loss, color="#bbbbbb", lw=0.8, label="loss")
    ax1.plot(xs, _smooth(loss), color="black", lw=1.4, label="loss (EMA)")
    for key, color in (("kd_loss", "#2874a6"), ("ce", "#c0392b")):
        kx, ky = _series(rows, key)
        if kx and ky != loss:
            ax1.plot(kx, _smooth(ky), color=color, lw=1.1, label=f"{key} (EMA)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.legend(fontsize=8)
    lx, lr = _series(rows, "lr")
    if lx:
        ax2.plot(lx, lr, color="#1e8449")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    ax2.set_title("learning rate")
    fig.suptitle(title, fontsize=9)
    return fig


VAL_PANELS = (("val_ce", "dev CE (reference responses)"), ("val_kd", "dev divergence to the teacher (all tokens, tau 1)"),
              ("val_rougeL", "dev ROUGE-L"))


def _plot_validation(rows, title):
    """The dev-split validation rows (training.validation) beside the training loss."""
    panels = [(k, label) for k, label in VAL_PANELS if _series(rows, k)[0]]
    if not panels:
        return None
    fig, axes = _figure(4.2 * (len(panels) + 1), 3.6, len(panels) + 1)
    xs, loss = _series(rows, "loss")
    if xs:
        axes[0].plot(xs, _smooth(loss), color="black", lw=1.2, label="training loss (EMA)")
    cx, ce = _series(rows, "val_ce")
    if cx:
        axes[0].plot(cx, ce, "o-", color="#c0392b", ms=3, lw=1.2, label="dev CE")
    axes[0].set_title("training loss and dev CE")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8)
    for ax, (key, label) in zip(axes[1:], panels):
        vx, vy = _series(rows, key)
        ax.plot(vx, vy, "o-", color="#2874a6", ms=3, lw=1.2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_dev_curves(curves: Sequence[Dict[str, Any]], path: str | Path, title: str = "") -> Optional[Path]:
    """One figure for a table: each row's dev ROUGE-L and dev divergence against the step.

    curves: [{"label", "rows": the validation rows of the row's run (its train_log.jsonl)}]."""
    curves = [c for c in curves if any("val_rougeL" in r or "val_kd" in r or "val_ce" in r for r in c["rows"])]
    if not curves:
        return None
    keys = [k for k, _ in VAL_PANELS if any(_series(c["rows"], k)[0] for c in curves)]
    fig, axes = _figure(4.6 * len(keys), 3.8, len(keys))
    for ax, key in zip(axes, keys):
        for c in curves:
            xs, ys = _series(c["rows"], key)
            if xs:
                ax.plot(xs, ys, "o-", ms=2.5, lw=1.1, label=c["label"])
        ax.set_title(dict(VAL_PANELS)[key], fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    return _save(fig, Path(path))


def _plot_ratio(rows, title):
    xs, r = _series(rows, "ratio")
    if not xs:
        xs, r = _series(rows, "ratio_next")
    if not xs:
        return None
    fig, (ax,) = _figure(6, 3.6)
    ax.plot(xs, r, color="#6c3483", lw=1.5, label="token ratio r (LATF)")
    kx, kf = _series(rows, "kept_frac")
    if kx and kf != r:
        ax.plot(kx, kf, color="#aaaaaa", lw=0.8, ls="--", label="kept fraction")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("r")
    ax.set_title(f"LATF token ratio (final r = {r[-1]:.3f})")
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=9)
    return fig


def _early_late(tele: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    tele = sorted((r for r in tele if "step" in r), key=lambda r: r["step"])
    if not tele:
        return [], []
    n = max(1, int(len(tele) * EARLY_LATE_FRAC))
    if len(tele) == 1:
        return tele, []
    n = min(n, len(tele) // 2)
    return tele[:n], tele[-n:]


def hard_easy_tau(row: Dict[str, Any]) -> Tuple[List[float], List[float]]:
    """The temperatures of the kept tokens of one telemetry row, split into hard and easy.

    Hard / easy: difficulty above / at-or-below the median difficulty of the kept tokens. The tau list
    holds the kept tokens in position order, as do the difficulties selected by the kept mask; when the
    lengths do not line up (e.g. a down-sampled row) the split falls back to tau's own median (with IDTS
    tau is a monotone function of the difficulty, so it is the same split).
    """
    tau = [float(t) for t in row.get("tau") or []]
    if not tau:
        return [], []
    diff, kept = row.get("difficulty"), row.get("kept")
    if diff is not None and kept is not None and len(diff) == len(kept):
        dk = [float(d) for d, k in zip(diff, kept) if k]
        if len(dk) == len(tau):
            med = _lower_median(dk)
            hard = [t for t, d in zip(tau, dk) if d > med]
            easy = [t for t, d in zip(tau, dk) if d <= med]
            return hard, easy
    med = _lower_median(tau)
    return [t for t in tau if t < med], [t for t in tau if t >= med]


def _lower_median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[(len(s) - 1) // 2]


def _plot_tau(tele, title):
    early, late = _early_late([r for r in tele if r.get("tau")])
    if not early:
        return None
    panels = [("early", early)] + ([("late", late)] if late else [])
    fig, axes = _figure(5 * len(panels), 3.6, len(panels))
    for ax, (when, rows) in zip(axes, panels):
        hard, easy = [], []
        for r in rows:
            h, e = hard_easy_tau(r)
            hard += h
            easy += e
        allv = hard + easy
        lo, hi = min(allv), max(allv)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.05, hi + 0.05
        bins = [lo + (hi - lo) * i / 40 for i in range(41)]
        if hard:
            ax.hist(hard, bins=bins, color=HARD, alpha=0.6, label=f"hard (n={len(hard)})")
        if easy:
            ax.hist(easy, bins=bins, color=EASY, alpha=0.6, label=f"easy (n={len(easy)})")
        ax.axvline(1.0, color="black", lw=0.8, ls=":")
        steps = f"step {rows[0]['step']}" if len(rows) == 1 else f"steps {rows[0]['step']}-{rows[-1]['step']}"
        ax.set_title(f"{when} in training ({steps})", fontsize=10)
        ax.set_xlabel("token temperature τ")
        ax.set_ylabel("tokens")
        ax.legend(fontsize=8)
    fig.suptitle(f"τ of hard vs easy kept tokens — {title}", fontsize=9)
    return fig


def _plot_difficulty(data, title):
    train, tele = data
    kx, kept = _series(train, "diff_kept_mean")
    dx, dropped = _series([r for r in train if (r.get("kept_frac") or 1.0) < 1.0], "diff_dropped_mean")
    _, late = _early_late([r for r in tele if r.get("difficulty") and r.get("kept")])
    late = late or [r for r in tele if r.get("difficulty") and r.get("kept")][-1:]
    if not kx and not late:
        return None
    fig, axes = _figure(10, 3.6, 2)
    ax1, ax2 = axes
    if kx:
        ax1.plot(kx, _smooth(kept), color=KEPT, lw=1.4, label="kept tokens")
    if dx:
        ax1.plot(dx, _smooth(dropped), color=DROPPED, lw=1.4, label="dropped tokens")
    ax1.set_xlabel("step")
    ax1.set_ylabel("mean difficulty")
    ax1.set_title("difficulty of kept vs dropped tokens")
    if kx or dx:
        ax1.legend(fontsize=8)
    kd, dd = [], []
    for r in late:
        if len(r["difficulty"]) != len(r["kept"]):
            continue
        for d, k in zip(r["difficulty"], r["kept"]):
            (kd if k else dd).append(float(d))
    if kd or dd:
        allv = kd + dd
        lo, hi = min(allv), max(allv)
        if hi - lo < 1e-9:
            hi = lo + 1e-3
        bins = [lo + (hi - lo) * i / 40 for i in range(41)]
        if kd:
            ax2.hist(kd, bins=bins, color=KEPT, alpha=0.6, label=f"kept (n={len(kd)})")
        if dd:
            ax2.hist(dd, bins=bins, color=DROPPED, alpha=0.6, label=f"dropped (n={len(dd)})")
        ax2.legend(fontsize=8)
        ax2.set_title(f"late in training (step {late[-1]['step']})", fontsize=10)
    ax2.set_xlabel("difficulty s_i")
    ax2.set_ylabel("tokens")
    fig.suptitle(title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- a table
def plot_table(bars: Sequence[Dict[str, Any]], path: str | Path, title: str = "",
               ylabel: str = "ROUGE-L (Avg)") -> Optional[Path]:
    """Bars of the rows' averages with the std over seeds as error bars.

    bars: [{"label", "mean", "std", "kind": "plain" | "adakd" | "baseline", "sig": bool}], in table order.
    """
    bars = [b for b in bars if b.get("mean") is not None and math.isfinite(b["mean"])]
    if not bars:
        return None
    colors = {"plain": "#95a5a6", "adakd": "#2874a6", "baseline": "#f5cba7"}
    width = max(6.0, 0.85 * len(bars) + 2)
    fig, (ax,) = _figure(width, 4.4)
    xs = list(range(len(bars)))
    means = [b["mean"] for b in bars]
    stds = [b.get("std") or 0.0 for b in bars]
    ax.bar(xs, means, yerr=stds, capsize=3, color=[colors.get(b.get("kind"), "#2874a6") for b in bars],
           edgecolor="black", linewidth=0.6)
    lo = min(m - s for m, s in zip(means, stds))
    hi = max(m + s for m, s in zip(means, stds))
    span = max(hi - lo, 1e-6)
    bottom = max(0.0, lo - 0.6 * span)
    ax.set_ylim(bottom, hi + 0.25 * span)
    for x, m, s, b in zip(xs, means, stds, bars):
        ax.text(x, m + s + 0.03 * span, f"{m:.2f}" + ("†" if b.get("sig") else ""), ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([b["label"] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel + (f"\n(axis starts at {bottom:.1f})" if bottom > 0 else ""), fontsize=9)
    ax.set_title(textwrap.fill(title, int(width * 10)), fontsize=9)
    return _save(fig, Path(path))


# ------------------------------------------------------------------ the difficulty spread at mid-training
DIFFICULTY_BANDS = (0.1, 0.5)   # issue 12's regime figure: the share of tokens with s_i in [0.1, 0.5]


def mid_training_rows(tele: Sequence[Dict[str, Any]], total_steps: int, n: int = 2) -> List[Dict[str, Any]]:
    """The `n` telemetry rows with difficulties whose steps are nearest to total_steps / 2 (in step order)."""
    rows = [r for r in tele if r.get("difficulty") and "step" in r]
    rows = sorted(rows, key=lambda r: (abs(r["step"] - total_steps / 2), r["step"]))[:n]
    return sorted(rows, key=lambda r: r["step"])


def difficulty_spread(values: Sequence[float], bands: Tuple[float, float] = DIFFICULTY_BANDS) -> Dict[str, float]:
    """Shares of tokens below, inside (inclusive) and above the band, and the median, of difficulties."""
    lo, hi = bands
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no difficulties to summarise")
    m = len(v)
    return {"tokens": m, "below": sum(x < lo for x in v) / m, "inside": sum(lo <= x <= hi for x in v) / m,
            "above": sum(x > hi for x in v) / m, "median": statistics.median(v)}


def plot_difficulty_mid(run_dir: str | Path, path: str | Path, n_rows: int = 2) -> Dict[str, Any]:
    """Histogram of every valid token's Hellinger difficulty in the telemetry rows nearest mid-training
    (kept or not), with the band shares of `difficulty_spread`; returns those figures and the steps used.
    The run's total steps are the last step of its train_log.jsonl."""
    run_dir = Path(run_dir)
    train = read_jsonl(run_dir / "train_log.jsonl")
    total = max((int(r["step"]) for r in train if "step" in r), default=0)
    rows = mid_training_rows(read_jsonl(run_dir / "telemetry.jsonl"), total, n_rows)
    if not rows:
        raise ValueError(f"{run_dir}: no telemetry rows with difficulties (adakd.telemetry_every > 0 is needed)")
    values = [float(d) for r in rows for d in r["difficulty"]]
    spread = {**difficulty_spread(values), "steps": [r["step"] for r in rows], "total_steps": total}
    fig, (ax,) = _figure(5.5, 3.6)
    ax.hist(values, bins=[i / 50 for i in range(51)], color=KEPT, alpha=0.8)
    for b in DIFFICULTY_BANDS:
        ax.axvline(b, color="black", lw=0.8, ls=":")
    ax.set_xlabel("Hellinger difficulty s_i")
    ax.set_ylabel("tokens")
    ax.set_title(f"steps {', '.join(map(str, spread['steps']))} of {total}: {spread['inside']:.0%} in "
                 f"[{DIFFICULTY_BANDS[0]}, {DIFFICULTY_BANDS[1]}], median {spread['median']:.3f}", fontsize=9)
    fig.suptitle(run_dir.name, fontsize=9)
    spread["figure"] = str(_save(fig, Path(path)))
    return spread
