"""The report's plots, drawn with matplotlib's Agg backend straight to PNG bytes.

Figures are built as `matplotlib.figure.Figure` objects (no pyplot global state), so plotting is
thread-safe and needs no display. Every function returns PNG bytes, or None when its input holds
nothing to draw; the report turns None into a "not available" note.

    stage_curves(rows, alarms, best_step, best_label)  training curves of one stage, a grid of panels
    rm_accuracy(runs)                          reward-model train / held-out accuracy per member
    calibration(bins)                          reliability diagram of a reward model
    frontier(points)                           gold vs KL across methods (the reward–KL frontier)
    proxy_vs_gold(rows, alarms)                proxy and gold reward against sqrt(KL) or step
    model_bars(summary, key)                   one metric per model (base → SFT → PPO/DPO)
    law_fit(points, fit)                       a run's gold gain against √KL with its fitted law (Findings)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from fnmatch import fnmatchcase

import matplotlib

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563"]
ALARM_COLOR = "#dc2626"
BEST_COLOR = "#16a34a"

# Panels of a stage's curve grid: (title, y label, metric keys, a "prefix/" for every key under it, or a
# "*" pattern).
PANELS: list[tuple[str, str, list[str]]] = [
    ("Loss", "loss", ["loss/"]),
    ("Reward", "reward", ["reward/mean", "reward/total", "rewards/chosen", "rewards/rejected", "rewards/margin"]),
    ("Reward by source", "batch mean", ["reward/*/mean"]),  # a weighted list of sources: each one's mean
    ("Gold (held-out judge)", "gold score", ["gold/mean"]),
    ("KL to reference", "nats / sequence", ["kl/mean"]),
    ("Response length", "tokens", ["response/length"]),
    ("Held-out perplexity", "perplexity", ["eval/perplexity"]),
    ("Preference accuracy", "accuracy", ["reward/accuracy", "rewards/accuracy", "eval/accuracy"]),
    ("Ensemble disagreement", "std across members", ["reward/ensemble_std"]),
    ("Policy entropy", "nats / token", ["policy/entropy"]),
]


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold", color="#111827")
    ax.set_xlabel(xlabel, fontsize=8, color="#374151")
    ax.set_ylabel(ylabel, fontsize=8, color="#374151")
    ax.tick_params(labelsize=7, colors="#374151")
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return buf.getvalue()


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def points(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        if _num(r.get(key)) and _num(r.get("step")):
            xs.append(float(r["step"]))
            ys.append(float(r[key]))
    return xs, ys


def ema(ys: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with alpha = 2 / (span + 1), debiased at the start."""
    a, out, m, w = 2.0 / (span + 1), [], 0.0, 0.0
    for y in ys:
        m, w = (1 - a) * m + a * y, (1 - a) * w + a
        out.append(m / w)
    return out


def binned(xs: Sequence[float], ys: Sequence[float], bins: int) -> tuple[list[float], list[float]]:
    """Means of (x, y) within `bins` equal-width bins of x; empty bins are left out."""
    lo, hi = min(xs), max(xs)
    width = (hi - lo) / bins or 1.0
    sums: dict[int, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        acc = sums.setdefault(min(int((x - lo) / width), bins - 1), [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + x, acc[1] + y, acc[2] + 1
    keys = sorted(sums)
    return [sums[k][0] / sums[k][2] for k in keys], [sums[k][1] / sums[k][2] for k in keys]


def _keys(rows: Sequence[dict], spec: list[str]) -> list[str]:
    present = {k for r in rows for k, v in r.items() if _num(v)}
    keys = []
    for s in spec:
        if "*" in s:
            keys += sorted(k for k in present if fnmatchcase(k, s))
        else:
            keys += sorted(k for k in present if k.startswith(s)) if s.endswith("/") else ([s] if s in present else [])
    return keys


def _line(ax, xs, ys, color, label) -> None:
    if len(xs) > 25:  # noisy per-step values: faint raw line under a smoothed one
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs, ema(ys, max(3, len(xs) // 15)), color=color, linewidth=1.8, label=label)
    else:
        ax.plot(xs, ys, color=color, linewidth=1.6, marker="o" if len(xs) < 12 else None, markersize=3, label=label)


def _marks(ax, alarms: Sequence[dict], best_step: int | None, best_label: str | None = None) -> None:
    """Alarms as red dashed vertical lines named at the top; the best step as a green dotted line,
    named at the bottom by `best_label` (the metric that picked it: a PNG reused alone says so)."""
    for i, a in enumerate(sorted(alarms, key=lambda a: a["step"])):
        ax.axvline(a["step"], color=ALARM_COLOR, linestyle="--", linewidth=1.1, alpha=0.9)
        # Alternate the label's side of the line so alarms a few steps apart stay readable.
        ax.annotate(a["name"], xy=(a["step"], 1.0), xycoords=("data", "axes fraction"), fontsize=6.5,
                    color=ALARM_COLOR, rotation=90, ha="right" if i % 2 == 0 else "left", va="top")
    if best_step is not None:
        ax.axvline(best_step, color=BEST_COLOR, linestyle=":", linewidth=1.3)
        if best_label:
            ax.annotate(best_label, xy=(best_step, 0.0), xycoords=("data", "axes fraction"), fontsize=6.5,
                        color=BEST_COLOR, rotation=90, ha="left", va="bottom")


def stage_curves(rows: Sequence[dict], alarms: Sequence[dict] = (), best_step: int | None = None,
                 cols: int = 3, best_label: str | None = None) -> bytes | None:
    """One panel per metric group present in the stage's rows, alarms marked on every panel."""
    panels = [(t, y, keys) for t, y, spec in PANELS if (keys := _keys(rows, spec))]
    if not panels:
        return None
    cols = min(cols, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.9 * nrows), layout="constrained")
    for i, (title, ylabel, keys) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for j, key in enumerate(keys):
            xs, ys = points(rows, key)
            _line(ax, xs, ys, PALETTE[j % len(PALETTE)], key)
        _marks(ax, alarms, best_step, best_label)
        _style(ax, title, "step", ylabel)
        if len(keys) > 1:
            ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def rm_accuracy(runs: dict[str, Sequence[dict]]) -> bytes | None:
    """Train (per-batch) and held-out pairwise accuracy of each reward model (ensemble member)."""
    if not any(points(r, "reward/accuracy")[0] or points(r, "eval/accuracy")[0] for r in runs.values()):
        return None
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, rows) in enumerate(runs.items()):
        c = PALETTE[i % len(PALETTE)]
        xs, ys = points(rows, "reward/accuracy")
        if xs:
            ax.plot(xs, ema(ys, max(3, len(xs) // 15)), color=c, linewidth=1.2, alpha=0.6, label=f"{name} train")
        xs, ys = points(rows, "eval/accuracy")
        if xs:
            ax.plot(xs, ys, color=c, linewidth=1.8, marker="o", markersize=3.5, label=f"{name} held-out")
    ax.axhline(0.5, color="#9ca3af", linestyle=":", linewidth=1)
    _style(ax, "Reward model: pairwise accuracy", "step", "accuracy")
    ax.legend(fontsize=7, frameon=False, ncols=2 if len(runs) > 2 else 1, loc="lower right")
    return _png(fig)


def calibration(bins: Sequence[dict], title: str = "Reward model calibration") -> bytes | None:
    """Reliability diagram: per confidence bin, mean sigma(|r_w - r_l|) vs the accuracy, dot size ~ pairs."""
    pts = [b for b in bins if b.get("count") and _num(b.get("confidence")) and _num(b.get("accuracy"))]
    if not pts:
        return None
    fig = Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0.5, 1.0], [0.5, 1.0], color="#9ca3af", linestyle="--", linewidth=1, label="perfectly calibrated")
    total = sum(b["count"] for b in pts)
    xs, ys = [b["confidence"] for b in pts], [b["accuracy"] for b in pts]
    ax.plot(xs, ys, color=PALETTE[0], linewidth=1.4)
    ax.scatter(xs, ys, s=[20 + 400 * b["count"] / total for b in pts], color=PALETTE[0], alpha=0.8,
               edgecolor="white", label="bins (size = pairs)", zorder=3)
    ax.set_xlim(0.48, 1.02)
    ax.set_ylim(min(0.45, min(ys) - 0.05), 1.02)
    _style(ax, title, "confidence  σ(|r_w − r_l|)", "accuracy")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return _png(fig)


def frontier(pts: Sequence[dict]) -> bytes | None:
    """Gold score against KL to the reference for each method's runs: up and to the left is better."""
    pts = [p for p in pts if _num(p.get("kl")) and _num(p.get("gold"))]
    if not pts:
        return None
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(p.get("method", "?") for p in pts))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for i, m in enumerate(methods):
        mine = sorted((p for p in pts if p.get("method", "?") == m), key=lambda p: p["kl"])
        c = PALETTE[i % len(PALETTE)]
        ax.plot([p["kl"] for p in mine], [p["gold"] for p in mine], color=c, linewidth=1.2, alpha=0.7,
                marker=markers[i % len(markers)], markersize=6, label=m)
        for p in mine:
            if p.get("label"):
                ax.annotate(str(p["label"]), (p["kl"], p["gold"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=c)
    _style(ax, "Reward–KL frontier", "KL(π ‖ π_ref)  nats / sequence", "gold score")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def proxy_vs_gold(rows: Sequence[dict], alarms: Sequence[dict] = (), proxy_key: str = "reward/mean",
                  gold_key: str = "gold/mean") -> bytes | None:
    """Proxy (left axis) and gold (right axis) against sqrt(KL) when KL is logged, else step
    (Gao et al. 2023 plot both against sqrt(KL)); the gap opening up is over-optimisation."""
    both = [r for r in rows if _num(r.get(proxy_key)) and _num(r.get(gold_key)) and _num(r.get("step"))]
    if len(both) < 2:
        return None
    use_kl = all(_num(r.get("kl/mean")) for r in both)
    x = [math.sqrt(max(r["kl/mean"], 0.0)) if use_kl else float(r["step"]) for r in both]
    proxy, gold = [r[proxy_key] for r in both], [r[gold_key] for r in both]
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x, proxy, s=6, color=PALETTE[0], alpha=0.25)
    ax2 = ax.twinx()
    ax2.scatter(x, gold, s=6, color=PALETTE[1], alpha=0.25)
    # Dots: the raw rows; lines: their means in equal-width bins of x (KL is not monotone in steps).
    nbins = max(2, min(20, len(both) // 3))
    ax.plot(*binned(x, proxy, nbins), color=PALETTE[0], linewidth=1.8, label=f"proxy ({proxy_key})")
    ax2.plot(*binned(x, gold, nbins), color=PALETTE[1], linewidth=1.8, label=f"gold ({gold_key})")
    steps = [r["step"] for r in both]
    for a in alarms:
        if a.get("name") == "proxy_gold":
            i = min(range(len(steps)), key=lambda j: abs(steps[j] - a["step"]))
            ax.axvline(x[i], color=ALARM_COLOR, linestyle="--", linewidth=1.1)
            ax.annotate("proxy_gold alarm", xy=(x[i], 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        color=ALARM_COLOR, rotation=90, ha="right", va="top")
    _style(ax, "Proxy vs gold (over-optimisation)", "sqrt(KL)  √nats" if use_kl else "step", "proxy reward")
    ax2.set_ylabel("gold score", fontsize=8, color=PALETTE[1])
    ax2.tick_params(labelsize=7, colors=PALETTE[1])
    ax.yaxis.label.set_color(PALETTE[0])
    ax.tick_params(axis="y", colors=PALETTE[0])
    ax2.spines["top"].set_visible(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, frameon=False, loc="lower right")
    return _png(fig)


def model_bars(summary: dict[str, dict], key: str = "gold/mean", title: str = "Gold score by model") -> bytes | None:
    """One bar per model in pipeline order, labelled with its value."""
    items = [(name, m[key]) for name, m in summary.items() if isinstance(m, dict) and _num(m.get(key))]
    if not items:
        return None
    fig = Figure(figsize=(1.3 + 1.1 * len(items), 3.2), layout="constrained")
    ax = fig.add_subplot()
    names, vals = zip(*items, strict=True)
    bars = ax.bar(range(len(vals)), vals, color=[PALETTE[i % len(PALETTE)] for i in range(len(vals))], width=0.6)
    ax.set_xticks(range(len(vals)), names)
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), textcoords="offset points",
                    xytext=(0, 3 if v >= 0 else -10), ha="center", fontsize=8)
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    pad = 0.12 * (hi - lo or 1.0)
    ax.set_ylim(lo - (pad if lo < 0 else 0), hi + pad)
    _style(ax, title, "", key)
    return _png(fig)


def law_fit(points: Sequence[tuple[float, float]], fit, title: str = "Gold gain against √KL") -> bytes | None:
    """A run's smoothed (d = √KL, gold gain) path with a fitted over-optimisation law
    (`monitor.findings.LawFit`, Gao et al. 2022) drawn over it, and the fitted peak."""
    if len(points) < 2:
        return None
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, "o", markersize=3, color=PALETTE[1], alpha=0.6, label="this run (smoothed)")
    if fit is not None:
        grid = [max(xs) * 1.1 * i / 100 for i in range(1, 101)]
        form = "d(α − β log d)" if fit.form == "rl" else "d(α − βd)"
        ax.plot(grid, [fit.gain(x) for x in grid], color=PALETTE[0], linewidth=1.6,
                label=f"{form}: α={fit.alpha:.3g}, β={fit.beta:.3g}, R²={fit.r2:.2f}")
        if fit.peak_kl is not None and math.sqrt(fit.peak_kl) <= max(grid):
            ax.axvline(math.sqrt(fit.peak_kl), color=BEST_COLOR, linestyle=":", linewidth=1.2)
    ax.axhline(0.0, color="#9ca3af", linewidth=0.8)
    _style(ax, title, "d = √KL  (√nats)", "gold − gold at start")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)
