"""The trend page: each cell's median over the recorded runs (like asv's graphs), with every step that
`bench compare` would flag between consecutive runs marked. One small chart per model, batch and
caller count; one line per strategy."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.compare import compare_cells
from bench.record import with_parts
from bench.sections import Figure, Section, Table
from plumbing.files import atomic_write_text
from reports.content import Report
from reports.html import to_html


def collect(runs: list[Any], threshold: float) -> tuple[dict[str, list[tuple[int, float]]], list[dict[str, Any]]]:
    """Per cell, (run index, p50 seconds) for every run that measured it validly; and the flagged steps
    between each run and the one before it."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    steps: list[dict[str, Any]] = []
    previous = None
    for i, run in enumerate(runs):
        cells = run.load_cells()  # the cells, each one's parts (length buckets) inside it
        for r in with_parts(cells):  # each part has its own line, as in summary.csv
            if r.ok and r.latency:
                series[r.id].append((i, r.latency.p50))
        if previous is not None:
            changes, _, _ = compare_cells(previous, cells, threshold)
            for c in changes:
                if c.verdict != "unchanged" and c.metric == "latency p50":
                    steps.append({"run_index": i, "run": run.id, "cell": c.cell_id, "verdict": c.verdict,
                                  "ratio": c.ratio, "ci": (c.ci_low, c.ci_high), "p": c.p_value})
        previous = cells
    return dict(series), steps


def _chart(runs: list[Any], series: dict[str, list[tuple[int, float]]], steps: list[dict[str, Any]]) -> bytes:
    from reports.plots import _facets, _png, _time_axis, colors, plt

    groups: dict[str, list[str]] = defaultdict(list)
    for cid in series:
        parts = cid.split("/")  # model/strategy/bB/tT/cC, then /POLICY where a run compared allocators
        model, _, b, t, c = parts[:5]
        groups[f"{model} {b} {t} {c}" + (f" {parts[5]}" if len(parts) > 5 else "")].append(cid)
    names = sorted(groups)
    fig, axes = _facets(len(names), width=5.0, height=3.3)
    palette = colors(sorted({cid.split("/")[1] for cid in series}))
    flagged = {(s["cell"], s["run_index"]): s["verdict"] for s in steps}
    for ax, name in zip(axes, names):
        for cid in sorted(groups[name]):
            strategy = cid.split("/")[1]
            xs, ys = zip(*series[cid])
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=palette[strategy], label=strategy)
            for x, y in zip(xs, ys):
                verdict = flagged.get((cid, x))
                if verdict:
                    ax.plot([x], [y], marker="v" if verdict == "regression" else "^", ms=10, mfc="none",
                            mec="#C00000" if verdict == "regression" else "#2E7D32", mew=2)
        _time_axis(ax, "p50")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([str(i + 1) for i in range(len(runs))], fontsize=7)
        ax.set_xlabel("run (oldest first)", fontsize=8)
    handles = {s: plt.Line2D([], [], color=c, marker="o", ms=4) for s, c in palette.items()}
    handles["regression"] = plt.Line2D([], [], ls="", marker="v", ms=9, mfc="none", mec="#C00000", mew=2)
    handles["improvement"] = plt.Line2D([], [], ls="", marker="^", ms=9, mfc="none", mec="#2E7D32", mew=2)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncols=min(len(handles), 7), fontsize=8,
               bbox_to_anchor=(0.5, 1.0 + 0.12 / max(1, len(axes) // 3)))
    fig.tight_layout()
    return _png(fig)


def render_trend(runs: list[Any], path: Path, threshold: float) -> int:
    """Write the trend page for runs (oldest first); returns how many regressions it marks."""
    series, steps = collect(runs, threshold)
    regressions = [s for s in steps if s["verdict"] == "regression"]
    run_rows = []
    for i, run in enumerate(runs):
        meta = run.meta()
        git = meta.get("environment", {}).get("git") or {}
        started = meta.get("started")
        run_rows.append([str(i + 1), run.id, datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started else "?",
                         git.get("branch") or "-", (git.get("commit") or "-")[:10],
                         meta.get("environment", {}).get("cpu_model", "")])
    step_rows = [[str(s["run_index"] + 1), s["run"], s["cell"], s["verdict"], f"{s['ratio']:.3f}x",
                  f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]", f"{s['p']:.1e}"] for s in steps]
    report = Report(
        title="interop-bench: trend over recorded runs",
        subtitle=f"{len(runs)} runs, {len(series)} cells; steps flagged when Mann-Whitney p < 0.05 and the ratio's "
                 f"95% CI clears {threshold:.0%}",
        warnings=[f"{len(regressions)} regression(s) between consecutive runs: see the table below"] if regressions else [],
        sections=[
            Section("trend", "Median latency per run",
                    ["Each point is a cell's median in one run; ▽ marks a significant slowdown past the threshold "
                     "against the run before, △ a speed-up."],
                    figures=[Figure("trend", _chart(runs, series, steps), "p50 per run, one chart per model, batch, "
                                    "threads and callers")] if series else []),
            Section("steps", "Flagged steps", [] if steps else ["None: no step between consecutive runs clears the threshold."],
                    tables=[Table(["run", "run id", "cell", "verdict", "ratio", "95% CI", "p"], step_rows,
                                  bad_rows={i for i, s in enumerate(steps) if s["verdict"] == "regression"})] if steps else []),
            Section("runs", "Runs", tables=[Table(["#", "run id", "started", "branch", "commit", "CPU"], run_rows,
                                                  align_numbers=False)]),
        ],
    )
    atomic_write_text(path, to_html(report))
    return len(regressions)
