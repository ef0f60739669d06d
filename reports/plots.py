"""matplotlib figures for the report, each returned as PNG bytes (embedded in the HTML page)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.stats import CostFit  # noqa: E402

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD"]


def colors(strategies: list[str]) -> dict[str, str]:
    """A fixed colour per strategy across every figure (torch first)."""
    ordered = sorted(strategies, key=lambda s: (s != "torch", s))
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(ordered)}


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _facets(n: int, width: float = 4.6, height: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _log_axis(axis: matplotlib.axis.Axis, fmt: Callable[[float], str]) -> None:
    """Log scale labelled at 1-2-5 steps in human units (no 2x10^-4 minor labels)."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _time_axis(ax: plt.Axes, label: str = "latency") -> None:
    ax.set_yscale("log")
    _log_axis(ax.yaxis, _fmt_s)
    ax.set_ylabel(label)
    ax.grid(True, which="major", axis="y", alpha=0.3)


def _fmt_s(v: float) -> str:
    if v <= 0:
        return "0"
    if v < 1e-3:
        return f"{v * 1e6:.3g}µs"
    if v < 1:
        return f"{v * 1e3:.3g}ms"
    return f"{v:.3g}s"


def _fmt_bytes(v: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:g}B"


def latency_distributions(samples: dict[tuple[str, str], np.ndarray], models: list[str], cmap: dict[str, str],
                          title: str) -> bytes:
    """Box plots of every sample (ns) per strategy, one panel per model."""
    fig, axes = _facets(len(models))
    for ax, model in zip(axes, models):
        items = [(s, v / 1e9) for (m, s), v in sorted(samples.items()) if m == model and len(v)]
        if not items:
            continue
        bp = ax.boxplot([v for _, v in items], whis=(1, 99), showfliers=False, patch_artist=True, widths=0.6)
        for patch, (s, _) in zip(bp["boxes"], items):
            patch.set_facecolor(cmap[s])
            patch.set_alpha(0.75)
        ax.set_xticks(range(1, len(items) + 1), [s for s, _ in items], rotation=20, ha="right")
        _time_axis(ax)
        ax.set_title(model)
    fig.suptitle(title + "  (box: IQR, line: median, whiskers: p1-p99)", fontsize=10, y=1.02)
    return _png(fig)


def p50_p99(df: pd.DataFrame, cmap: dict[str, str]) -> bytes:
    """Grouped bars of p50 with a p99 tick, per batch size, one panel per model."""
    models = list(dict.fromkeys(df.model))
    fig, axes = _facets(len(models))
    for ax, model in zip(axes, models):
        g = df[df.model == model]
        batches = sorted(g.batch.unique())
        strats = sorted(g.strategy.unique(), key=lambda s: (s != "torch", s))
        w = 0.8 / max(len(strats), 1)
        for i, s in enumerate(strats):
            gs = g[g.strategy == s].set_index("batch")
            x = np.arange(len(batches)) + (i - (len(strats) - 1) / 2) * w
            p50 = [gs.p50_ms.get(b, np.nan) / 1e3 for b in batches]
            p99 = [gs.p99_ms.get(b, np.nan) / 1e3 for b in batches]
            ax.bar(x, p50, w, color=cmap[s], label=s)
            ax.errorbar(x, p50, yerr=[np.zeros(len(p50)), np.subtract(p99, p50)], fmt="none", ecolor="#333",
                        capsize=2, lw=0.8)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        _time_axis(ax, "p50 (bar) to p99 (whisker, where estimable)")
        ax.set_title(model)
    axes[0].legend(fontsize=8)
    return _png(fig)


def lines_by(df: pd.DataFrame, x: str, y: str, cmap: dict[str, str], xlabel: str, ylabel: str,
             log_y: bool = True, yfmt: Callable[[float], str] | None = None) -> bytes:
    models = list(dict.fromkeys(df.model))
    fig, axes = _facets(len(models))
    for ax, model in zip(axes, models):
        g = df[df.model == model]
        for s in sorted(g.strategy.unique(), key=lambda s: (s != "torch", s)):
            gs = g[g.strategy == s].sort_values(x)
            ax.plot(gs[x], gs[y], "o-", color=cmap[s], label=s, ms=4)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
            _log_axis(ax.yaxis, yfmt or (lambda v: f"{v:g}"))
        elif yfmt:
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: yfmt(v)))
        ax.set_xticks(sorted(g[x].unique()), [f"{v:g}" for v in sorted(g[x].unique())])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.set_title(model)
    axes[0].legend(fontsize=8)
    return _png(fig)


def overhead(df: pd.DataFrame, cmap: dict[str, str]) -> bytes:
    """p50 relative to in-process torch for the same cell (1.0 = same as torch)."""
    g = df[df.vs_torch_p50.notna() & (df.strategy != "torch")]
    labels = list(dict.fromkeys(f"{m}\nb{b}" for m, b in zip(g.model, g.batch)))
    strats = sorted(g.strategy.unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) * max(len(strats), 1)), 3.6))
    w = 0.8 / max(len(strats), 1)
    for i, s in enumerate(strats):
        gs = g[g.strategy == s]
        idx = {f"{m}\nb{b}": v for m, b, v in zip(gs.model, gs.batch, gs.vs_torch_p50)}
        x = np.arange(len(labels)) + (i - (len(strats) - 1) / 2) * w
        ax.bar(x, [idx.get(lab, np.nan) for lab in labels], w, color=cmap[s], label=s)
    ax.axhline(1.0, color="#333", lw=1, ls="--")
    ax.set_yscale("log")
    _log_axis(ax.yaxis, lambda v: f"{v:g}x")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("p50 / torch p50 (lower is better)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def payload_sweep(df: pd.DataFrame, fits: dict[str, CostFit], cmap: dict[str, str]) -> bytes:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s in sorted(df.strategy.unique(), key=lambda s: (s != "torch", s)):
        g = df[df.strategy == s].sort_values("payload_bytes")
        ax.errorbar(g.payload_bytes, g.p50_ms / 1e3, yerr=[(g.p50_ms - g.ci_low_ms) / 1e3, (g.ci_high_ms - g.p50_ms) / 1e3],
                    fmt="o", color=cmap[s], ms=5, label=s)
        if s in fits:
            xs = np.geomspace(g.payload_bytes.min(), g.payload_bytes.max(), 60)
            f = fits[s]
            bw = f.bandwidth_text() if math.isinf(f.bandwidth_Bps) else f"bytes / {f.bandwidth_text()}"
            ax.plot(xs, f.predict(xs), "-", color=cmap[s], alpha=0.7, label=f"  fit: {_fmt_s(f.fixed_s)} + {bw}")
    ax.set_xscale("log", base=2)
    sizes = sorted(df.payload_bytes.unique())
    ax.set_xticks(sizes, [_fmt_bytes(v) for v in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("bytes per call (input + output)")
    _time_axis(ax, "p50 latency")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("identity model: cost of moving bytes through each strategy")
    return _png(fig)


def grouped_bars(df: pd.DataFrame, value: str, cmap: dict[str, str], ylabel: str, title: str,
                 stacked_under: str | None = None, log: bool = False) -> bytes:
    """One bar per strategy per model (batch = the row's batch)."""
    labels = list(dict.fromkeys(f"{m}\nb{b}" for m, b in zip(df.model, df.batch)))
    strats = sorted(df.strategy.unique(), key=lambda s: (s != "torch", s))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels) * max(len(strats), 1)), 3.6))
    w = 0.8 / max(len(strats), 1)
    for i, s in enumerate(strats):
        gs = df[df.strategy == s]
        idx = {f"{m}\nb{b}": v for m, b, v in zip(gs.model, gs.batch, gs[value])}
        x = np.arange(len(labels)) + (i - (len(strats) - 1) / 2) * w
        ax.bar(x, [idx.get(lab, np.nan) for lab in labels], w, color=cmap[s], label=s)
        if stacked_under:
            under = {f"{m}\nb{b}": v for m, b, v in zip(gs.model, gs.batch, gs[stacked_under])}
            ax.bar(x, [under.get(lab, np.nan) for lab in labels], w, color="white", alpha=0.35, hatch="//",
                   edgecolor=cmap[s])
    if log:
        ax.set_yscale("log")
        _log_axis(ax.yaxis, lambda v: f"{v:g}")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def breakdown_per_model(per_model: dict[str, list[tuple[str, dict[str, float], float]]], cmap: dict[str, str]) -> bytes:
    """One small chart per model: each strategy's call as its phases' medians stacked, in absolute time
    (each model on its own scale), the call's p50 written at the end of the bar."""
    n = len(per_model)
    cols = min(n, 3)
    height = max(len(rows) for rows in per_model.values()) * 0.3 + 1.3
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.4 * cols, height * math.ceil(n / cols)), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    phases = list(dict.fromkeys(p for rows in per_model.values() for _, ph, _ in rows for p in ph))
    shade = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(phases)}
    for ax, (model, rows) in zip(flat, per_model.items()):
        left = np.zeros(len(rows))
        for p in phases:
            width = np.array([ph.get(p, 0.0) for _, ph, _ in rows])
            if width.any():
                ax.barh(range(len(rows)), width, left=left, color=shade[p], height=0.72)
                left += width
        top = max(max(left.max(), max(m for _, _, m in rows)), 1e-9)
        for y, (_, _, median) in enumerate(rows):
            ax.text(max(left[y], median) + top * 0.02, y, _fmt_s(median), va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), [st for st, _, _ in rows], fontsize=7.5)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _fmt_s(v)))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(model, fontsize=9.5)
        ax.grid(True, axis="x", alpha=0.3)
    handles = [matplotlib.patches.Patch(color=shade[p], label=p) for p in phases]
    fig.legend(handles=handles, fontsize=8, ncols=min(len(phases), 6), loc="lower center", bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _png(fig)


def cold_start_phases(rows: list[tuple[str, dict[str, float], float | None]], title: str) -> bytes:
    """One bar per strategy, in seconds: the phases from a warm artifact cache stacked, then the
    artifact build that a start from nothing adds, hatched."""
    phases = list(dict.fromkeys(p for _, ph, _ in rows for p in ph))
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(rows) + 1.7))
    left = np.zeros(len(rows))
    for i, p in enumerate(phases):
        width = np.array([ph.get(p, 0.0) for _, ph, _ in rows])
        ax.barh(range(len(rows)), width, left=left, color=PALETTE[i % len(PALETTE)], label=p, height=0.72)
        left += width
    build = np.array([b or 0.0 for _, _, b in rows])
    ax.barh(range(len(rows)), build, left=left, color="white", edgecolor="#777", hatch="///", height=0.72,
            label="export/compile (from nothing)")
    for y, (warm, b) in enumerate(zip(left, build)):
        ax.text(warm + b, y, f"  {_fmt_s(warm)}" + (f" / {_fmt_s(warm + b)}" if b else ""), va="center", fontsize=7.5)
    ax.set_yticks(range(len(rows)), [r for r, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(float((left + build).max()) * 1.25, 1e-3))
    ax.set_xlabel("seconds: ready from a warm artifact cache / from nothing")
    ax.legend(fontsize=8, ncols=min(len(phases) + 1, 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.5 / max(len(rows), 1) - 0.1))
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def curve(c: Any, cmap: dict[str, str]) -> bytes:
    """A scenario's line plot (bench.sections.Curve): one line per series, x on a log scale."""
    fig, axes = _facets(1, 9.5, 4.6)
    ax = axes[0]
    markers = "osD^v<>ph*"
    for i, (label, pts) in enumerate(c.series.items()):
        if not pts:
            continue
        xs, ys = zip(*sorted(pts))
        strategy = label.split()[-1]
        # more routes than colours: the marker and line style tell apart the ones that share a colour
        ax.plot(xs, ys, marker=markers[i % len(markers)], ls="-" if i < 10 else "--", ms=4, label=label,
                color=cmap.get(strategy))
    if c.hline is not None:
        ax.axhline(c.hline, color="0.3", ls="--", lw=1, label=c.hline_label or None)
    ax.set_xscale("log")
    _log_axis(ax.xaxis, lambda v: f"{v:g}")  # 20, 50, 100 rather than 2x10^1
    if c.log_y:
        ax.set_yscale("log")
    if c.y_seconds:
        _log_axis(ax.yaxis, _fmt_s) if c.log_y else ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: _fmt_s(v)))
    ax.set_xlabel(c.xlabel)
    ax.set_ylabel(c.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)
