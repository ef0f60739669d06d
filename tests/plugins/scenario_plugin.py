"""A scenario added by a plugin, with no edit anywhere else: it counts what a fixed number of calls
costs. It proves the runner, summary.csv, compare and the report reach scenarios only through the
registry and the Scenario class."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.record import Cell, CellResult
from bench.scenarios import register
from bench.scenarios.base import Context, Measured, Metric, Option, Scenario, positive_int
from bench.sections import Section, Table


@register
class FixedCalls(Scenario):
    name = "fixed-calls-test"
    summary = "test only: a fixed number of back-to-back calls"
    table = "fixed_calls_test"
    options = {"calls": Option(50, positive_int, "how many calls", "--fixed-calls")}
    figure_columns = ("fixed_calls_done",)
    metrics = (Metric("fixed_calls_done", "calls done", "higher", 0.5),)

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        return [Cell(m, s, cfg.batch_sizes[0], cfg.threads[0], 1, "", self.name, f"n{options['calls']}")
                for m in cfg.models for s in cfg.strategies]

    def measure(self, ctx: Context) -> Measured:
        n = ctx.options["calls"]
        lat = np.empty(n, dtype=np.int64)
        t0 = time.perf_counter()
        for i in range(n):
            s = time.perf_counter_ns()
            ctx.session.run(ctx.inputs)
            lat[i] = time.perf_counter_ns() - s
        wall = time.perf_counter() - t0
        return Measured(lat, n, wall, {"converged": True, "rounds": 1, "wall_s": wall, "stop_reason": f"{n} calls"},
                        figures={"fixed_calls_done": float(n)}, detail={"n": n})

    def describe(self, result: CellResult) -> str:
        return f"{result.detail.get('n')} fixed calls"

    def report(self, rows: list[dict[str, Any]], results: list[CellResult], options: dict[str, Any]) -> Section | None:
        return Section("fixed-calls", "Fixed calls (a plug-in scenario)", ["Each strategy made a fixed number of calls."],
                    [Table(["strategy", "calls", "p50 ms"], [[r["strategy"], f"{r['fixed_calls_done']:.0f}", f"{r['p50_ms']:.3f}"]
                                                                  for r in rows])])
