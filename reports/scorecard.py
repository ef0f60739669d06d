"""The scorecard: per model, one row per strategy with what a review asks first (p50, p99, best
throughput, the highest rate within the p99 budget, CPU per inference, memory added, ready from a
warm cache, Python at deployment, the artifact shipped, correctness), at the smallest batch, one
thread count and the run's first allocator policy. The sections after it hold the details."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.record import CellResult
from strategies.base import RouteTable


@dataclass
class Row:
    strategy: str
    status: str
    p50_ms: float | None
    p99_ms: float | None
    throughput_sps: float | None
    throughput_callers: int | None
    max_rps: float | None
    cpu_ms_per_inference: float | None
    mem_added_mb: float | None
    ready_s: float | None
    python_at_deployment: bool | None
    artifact: str
    correctness: str


@dataclass
class Card:
    model: str
    batch: int
    threads: int
    rows: list[Row]


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else float(v)


def cards(df: pd.DataFrame, results: list[CellResult], facts: RouteTable,
          capacity: dict[tuple[str, int, int, str, str], Any], payload_models: tuple[str, ...] = ("identity",)) -> list[Card]:
    """One card per model at its smallest batch and thread count (``df`` holds one allocator policy)."""
    main = df[~df.model.isin(payload_models)]
    if main.empty:
        return []
    ready = {}
    for r in results:
        c = r.cell
        if r.ok and c.scenario == "latency" and r.cold_start_phases:
            ready.setdefault((c.model, c.batch, c.threads, c.strategy), sum(r.cold_start_phases.values()))
    out = []
    for model, g in main.groupby("model", sort=False):
        batch, threads = int(g.batch.min()), int(g.threads.min())
        g = g[(g.batch == batch) & (g.threads == threads)]
        single = g[g.concurrency == g.concurrency.min()]
        if "scenario" in single:
            single = single[single.scenario == "latency"] if (single.scenario == "latency").any() else single
        rows = []
        for r in single.itertuples():
            f = facts.of(r.strategy)
            mine = g[(g.strategy == r.strategy) & g.valid & g.throughput_sps.notna()]
            best = mine.loc[mine.throughput_sps.idxmax()] if len(mine) else None
            cap = capacity.get((str(model), batch, threads, str(r.malloc), r.strategy))
            if r.valid:
                err = _num(r.max_abs_err)
                correct = "ok" + (f" ({err:.1e})" if err else " (exact)")
            else:
                first = str(r.error).splitlines()[0][:90] if isinstance(r.error, str) and r.error else ""
                correct = {"invalid": "WRONG outputs", "error": "failed", "skipped": "skipped"}.get(r.status, r.status) \
                    + (f": {first}" if first and r.status != "invalid" else "")
            rows.append(Row(
                r.strategy, r.status, _num(r.p50_ms) if r.valid else None, _num(r.p99_ms) if r.valid else None,
                _num(best.throughput_sps) if best is not None else None,
                int(best.concurrency) if best is not None else None,
                cap.max_rps if cap is not None else None, _num(r.cpu_ms_per_inference) if r.valid else None,
                _num(r.mem_added_mb) if r.valid else None, ready.get((str(model), batch, threads, r.strategy)),
                f.python_at_deployment, f.artifact or "none",
                correct))
        rows.sort(key=lambda x: (x.p50_ms is None, x.p50_ms or 0.0))
        out.append(Card(str(model), batch, threads, rows))
    return out
