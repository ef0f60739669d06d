"""``open-loop``: requests arrive at set rates (Poisson by default), whatever the strategy is doing;
latency runs from each request's scheduled arrival (bench.arrivals). One cell per rate, so each rate
is a fresh process like every other cell. Figures per rate: offered and achieved rate, p50 to
p99.9, the share of requests sent late, the largest queue, CPU per inference."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from bench import arrivals
from bench.record import Cell, CellResult
from bench.scenarios import register
from bench.scenarios.base import (
    Context,
    Measured,
    Metric,
    Option,
    Scenario,
    choice,
    positive_int,
    positive_number,
)
from bench.scenarios.latency import main_grid
from bench.sections import Curve, Section, Table
from plumbing.errors import UserError

MAX_RATE = 1e6
# a rate above this share of the Python load generator's own ceiling is flagged: past it the
# harness's lateness, not the strategy's, starts to show in the tail
SAFE_SHARE = 0.5


def check_rates(label: str, value: Any) -> list[float]:
    """'100,200,400' or [100, 200]: positive request rates per second, at most 1e6."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(re.fullmatch(r"\d{1,9}(\.\d{1,6})?", p, re.ASCII) for p in parts):
            raise UserError(f"{label}: {value[:80]!r} is not a comma-separated list of request rates per second, e.g. 100,200,400")
        value = [float(p) for p in parts]
    if not isinstance(value, list) or not value:
        raise UserError(f"{label} must be a non-empty list of request rates per second, got {value!r}")
    return sorted({positive_number(label, v, MAX_RATE) for v in value})


def rate_label(rate: float) -> str:
    return f"{rate:g}rps"


def label_rate(point: str) -> float:
    return float(point.removesuffix("rps"))


def window_options() -> dict[str, Option]:
    """The options of one open-loop window, shared with the slo scenario."""
    return {
        "arrival": Option("poisson", choice("poisson", "constant"), "arrival process: poisson or constant", "--arrival"),
        "callers": Option(4, lambda k, v: positive_int(k, v, 1024),
                          "threads serving the arrivals (requests beyond them queue)", "--open-loop-callers"),
        "min_duration_s": Option(2.0, lambda k, v: positive_number(k, v, 86_400), "each window measures at least this long"),
        "min_requests": Option(600, lambda k, v: positive_int(k, v), "and at least this many requests (p99 needs 563)"),
        "max_duration_s": Option(10.0, lambda k, v: positive_number(k, v, 86_400),
                                 "but no longer than this (a low rate then measures fewer requests)"),
        "warmup_s": Option(0.5, lambda k, v: positive_number(k, v, 86_400), "arrivals at the same rate before measuring"),
    }


def check_window(where: str, o: dict[str, Any]) -> dict[str, Any]:
    if o["min_duration_s"] > o["max_duration_s"]:
        raise UserError(f"[{where}] min_duration_s ({o['min_duration_s']:g}) is above max_duration_s ({o['max_duration_s']:g})")
    return o


def open_cells(cfg: Any, scenario: str, callers: int, point: str) -> list[Cell]:
    """One caller-pool cell per model x batch x threads x strategy at ``point`` (strategies that take
    no concurrent calls get one caller)."""
    import strategies

    out = []
    for c in main_grid(cfg, scenario, lambda n: n == min(cfg.concurrency)):
        n = callers if strategies.get(c.strategy).concurrent_calls else 1
        out.append(Cell(c.model, c.strategy, c.batch, c.threads, n, c.malloc, scenario, point))
    return out


def run_window(ctx: Context, rate: float, opts: dict[str, Any], budget_s: float = 0.0, seed: int = 0) -> tuple[arrivals.ArrivalResult, dict[str, Any]]:
    """One open-loop window at ``rate``: its arrivals, their figures and the CPU they cost."""
    plan = arrivals.plan(rate, opts["min_duration_s"], opts["min_requests"], opts["max_duration_s"], opts["warmup_s"],
                         opts["arrival"], seed, budget_s)
    mark = ctx.cpu.mark()
    res = arrivals.drive(ctx.session, ctx.inputs, plan, ctx.cell.concurrency, ctx.between_rounds)
    cpu_s, by_role = ctx.cpu.since(mark)
    if res.error:
        raise RuntimeError(f"a call failed under open-loop load at {rate:g}/s: {res.error}")
    figs = res.figures()
    lat = res.latency_ns()
    figs.update({f"p{q:g}_s": (float(np.percentile(lat, q)) / 1e9 if len(lat) else None) for q in (50, 90, 99, 99.9)})
    figs["service_p99_s"] = float(np.percentile(res.service_ns(), 99)) / 1e9 if len(lat) else None
    total_calls = len(plan.offsets_s) if not res.stopped_early else int((res.done_ns >= 0).sum()) + plan.warmup_n
    figs["cpu_ms_per_inference"] = cpu_s / total_calls * 1e3 if total_calls else None  # the warm-up is load too
    figs["cpu_by_role_ms"] = {k: v / total_calls * 1e3 for k, v in by_role.items()} if total_calls else {}
    figs["rate"] = rate
    figs["requests"] = len(res.sched_ns)
    figs["stopped_early"] = res.stopped_early
    figs["driver"] = res.driver
    return res, figs


def ceiling_warning(ctx: Context, rate: float, driver: str) -> str | None:
    ceiling = (ctx.job.get("load_generator") or {}).get("ceiling_rps")
    if driver == "python threads" and ceiling and rate > SAFE_SHARE * ceiling:
        return (f"{rate:g}/s is above {SAFE_SHARE:.0%} of the Python load generator's own ceiling "
                f"({ceiling:,.0f}/s against a session that does nothing): its tail may be the harness's")
    return None


@register
class OpenLoop(Scenario):
    name = "open-loop"
    summary = "requests arrive at set rates (Poisson); latency from each scheduled arrival, late sends, queue"
    table = "open_loop"
    options = {
        "rates": Option([50.0, 100.0, 200.0], check_rates, "arrival rates per second, comma-separated", "--rates"),
        **window_options(),
    }
    figure_columns = ("offered_rps", "achieved_rps", "late_fraction", "max_queue", "p999_ms")
    metrics = (Metric("p99_ms", "p99 (arrival)", "lower", 0.30),)
    latency_threshold = 0.30
    needs_load_generator = True

    def configure(self, raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
        return check_window(self.table, super().configure(raw, flags))

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        return [c for rate in options["rates"] for c in open_cells(cfg, self.name, options["callers"], rate_label(rate))]

    def point_label(self, point: str) -> str:
        return f"{label_rate(point):g}/s"

    def timeout_s(self, sampling: Any, options: dict[str, Any]) -> float:
        return options["warmup_s"] + options["max_duration_s"] * 3 + 30

    def measure(self, ctx: Context) -> Measured:
        rate = label_rate(ctx.cell.point)
        res, figs = run_window(ctx, rate, ctx.options)
        lat = res.latency_ns()
        served = int(res.completed.sum())
        if not served:
            raise RuntimeError(f"no request completed at {rate:g}/s")
        wall = (res.done_ns[res.completed].max() - res.sched_ns[0]) / 1e9
        warnings = [w for w in [ceiling_warning(ctx, rate, res.driver)] if w]
        if figs["completed_fraction"] < 1:
            warnings.append(f"{1 - figs['completed_fraction']:.1%} of the requests at {rate:g}/s were never served by the "
                            "window's end plus its grace: the route cannot keep up, and its percentiles (which count "
                            "them with the time they had waited) are lower bounds")
        return Measured(
            lat, served, wall,
            {"converged": True, "rounds": 1, "wall_s": wall,
             "stop_reason": f"{len(res.sched_ns)} {ctx.options['arrival']} arrivals at {rate:g}/s, {res.callers} callers ({res.driver})"},
            calls_per_s=figs["achieved_rps"],
            figures={"offered_rps": figs["offered_rps"], "achieved_rps": figs["achieved_rps"],
                     "late_fraction": figs["late_fraction"], "max_queue": figs["max_queue"],
                     "p999_ms": figs["p99.9_s"] * 1e3 if figs["p99.9_s"] is not None else None},
            detail={**figs, "warnings": warnings},
            cpu_s=figs["cpu_ms_per_inference"] / 1e3 * served if figs["cpu_ms_per_inference"] is not None else None,
            cpu_by_role={k: v / 1e3 * served for k, v in figs["cpu_by_role_ms"].items()},
        )

    def describe(self, result: CellResult) -> str:
        d = result.detail
        if "rate" not in d:
            return ""
        ms = {k: f"{d[k] * 1e3:.2f}ms" if d.get(k) is not None else "-" for k in ("p50_s", "p99_s")}
        return (f"offered {d['offered_rps'] or 0:,.0f}/s achieved {d.get('achieved_rps') or 0:,.0f}/s  "
                f"p50 {ms['p50_s']} p99 {ms['p99_s']} (from arrival)  late {d.get('late_fraction') or 0:.1%}  "
                f"queue {d.get('max_queue') or 0:.0f}  CPU {d.get('cpu_ms_per_inference') or 0:.2f}ms/inference")

    def report(self, rows: list[dict[str, Any]], results: list[CellResult], options: dict[str, Any]) -> Section | None:
        ok = [r for r in results if r.ok and r.detail]
        if not ok:
            return None
        part = Section("open-loop", "Open-loop load: latency against offered rate")
        part.text.append(
            f"Requests arrive at a set rate ({options.get('arrival', 'poisson')} arrivals) whether or not the strategy has "
            "finished the previous ones; latency runs from each request's scheduled arrival, so queueing shows "
            "(closed-loop callers would instead slow down and hide it). *late* is the share of requests a "
            f"caller sent more than {arrivals.LATE_S * 1e3:g} ms after their time (all callers busy, or the "
            "generator behind); *queue* is the most requests due but not yet sent.")
        rows_out, series = [], {}
        for r in sorted(ok, key=lambda r: (r.cell.model, r.cell.batch, r.cell.strategy, label_rate(r.cell.point))):
            c, d = r.cell, r.detail
            rows_out.append([c.model, str(c.batch), c.strategy, f"{d['rate']:g}", f"{d['offered_rps']:,.0f}",
                             f"{d['achieved_rps']:,.0f}" if d.get("achieved_rps") else "-",
                             *(f"{d[k] * 1e3:.2f}" if d.get(k) is not None else "-" for k in ("p50_s", "p90_s", "p99_s", "p99.9_s")),
                             f"{d['service_p99_s'] * 1e3:.2f}" if d.get("service_p99_s") is not None else "-",
                             f"{d['late_fraction']:.1%}", f"{d['max_queue']:.0f}",
                             f"{d['cpu_ms_per_inference']:.2f}" if d.get("cpu_ms_per_inference") is not None else "-",
                             d.get("driver", "")])
            if d.get("p99_s") is not None:
                series.setdefault(f"{c.model} b{c.batch}: {c.strategy}", []).append((d["rate"], d["p99_s"]))
        part.tables.append(Table(
            ["model", "batch", "strategy", "rate/s", "offered/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
             "p99 from send ms", "late", "queue", "CPU ms/inference", "callers run by"], rows_out))
        part.figures.append(Curve("open_loop_p99", "offered rate (requests/s)", "p99 from arrival", series, y_seconds=True, log_y=True))
        for r in ok:
            part.text.extend(f"Warning ({r.id}): {w}" for w in r.detail.get("warnings", []))
        return part
