"""``slo``: per strategy, the highest request rate whose p99 (from each request's scheduled arrival)
stays within a budget (``--slo-p99 10ms``): a search over rates, each step a full open-loop window
in the cell's one process. The search doubles the rate from a start near one caller's throughput
until a window fails, then bisects (geometrically) until the bracket is within ``precision``; a
window stops early once more than 1% of its requests missed the budget, since its p99 then cannot
pass. The answer comes with its bracket (the lowest rate that failed), the p99's 95% interval at the
answer and whether that whole interval is within the budget."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.constraints import parse_ms
from bench.record import Cell, CellResult
from bench.scenarios import register
from bench.scenarios.base import (
    Context,
    Measured,
    Metric,
    Option,
    Scenario,
    positive_int,
    positive_number,
)
from bench.scenarios.open_loop import (
    MAX_RATE,
    SAFE_SHARE,
    ceiling_warning,
    check_window,
    open_cells,
    run_window,
    window_options,
)
from bench.sections import Curve, Section, Table
from bench.stats import quantile_ci
from plumbing.errors import UserError


def check_budget(label: str, value: Any) -> float:
    if value is None:
        raise UserError(f"{label}: the slo scenario needs a p99 budget, e.g. --slo-p99 10ms")
    try:
        ms = parse_ms(value, label)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not 0 < ms <= 3_600_000:
        raise UserError(f"{label} must be above 0 and at most an hour, got {value!r}")
    return ms / 1e3


def search(window, start: float, precision: float, max_steps: int, min_rate: float, max_rate: float) -> dict[str, Any]:
    """The highest passing rate: ``window(rate)`` -> (passed, figures). Doubling up from ``start``
    while windows pass (halving down while they fail), then bisection of the bracket."""
    steps: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        ok, figs = window(rate)
        steps.append({**figs, "rate": rate, "passed": ok})
        return ok

    lo, hi = None, None
    rate = min(max(start, min_rate), max_rate)
    while len(steps) < max_steps:
        if run(rate):
            lo = rate
            if hi is not None or rate >= max_rate:
                break
            rate = min(rate * 2, max_rate)
        else:
            hi = rate
            if lo is not None or rate <= min_rate:
                break
            rate = max(rate / 2, min_rate)
    while lo is not None and hi is not None and hi / lo > 1 + precision and len(steps) < max_steps:
        mid = math.sqrt(lo * hi)
        if run(mid):
            lo = mid
        else:
            hi = mid
    capped = lo is not None and hi is None and lo >= max_rate
    return {"max_rps": lo, "failed_at": hi, "capped": capped, "steps": steps}


@register
class Slo(Scenario):
    name = "slo"
    summary = "the highest request rate whose p99 from arrival stays within a budget (a search of open-loop windows)"
    table = "slo"
    options = {
        "p99": Option(None, check_budget, "p99 budget, e.g. 10ms (required)", "--slo-p99"),
        "precision": Option(0.10, lambda k, v: positive_number(k, v, 10), "stop when the bracket is within this share"),
        "max_steps": Option(12, lambda k, v: positive_int(k, v, 100), "at most this many windows per cell"),
        "min_rate": Option(1.0, lambda k, v: positive_number(k, v, MAX_RATE), "never below this rate"),
        "max_rate": Option(100_000.0, lambda k, v: positive_number(k, v, MAX_RATE), "never above this rate"),
        **{k: v for k, v in window_options().items() if k != "min_duration_s"},
        "min_duration_s": Option(1.0, lambda k, v: positive_number(k, v, 86_400), "each window measures at least this long"),
    }
    figure_columns = ("max_rps_within_slo",)
    metrics = (Metric("max_rps_within_slo", "rate in SLO", "higher", 0.25),)
    latency_threshold = 0.30
    needs_load_generator = True
    compares_latency = False  # its samples are at the rate this run's search found, not a fixed one

    def configure(self, raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
        o = check_window(self.table, super().configure(raw, flags))
        if o["min_rate"] > o["max_rate"]:
            raise UserError(f"[slo] min_rate ({o['min_rate']:g}) is above max_rate ({o['max_rate']:g})")
        return o

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        return open_cells(cfg, self.name, options["callers"], "")

    def timeout_s(self, sampling: Any, options: dict[str, Any]) -> float:
        return options["max_steps"] * (options["warmup_s"] + options["max_duration_s"] * 1.5 + 2) + 60

    def measure(self, ctx: Context) -> Measured:
        o = ctx.options
        budget = o["p99"]
        ceiling = (ctx.job.get("load_generator") or {}).get("ceiling_rps")
        max_rate = o["max_rate"]
        results: dict[float, Any] = {}

        def window(rate: float) -> tuple[bool, dict[str, Any]]:
            res, figs = run_window(ctx, rate, o, budget, seed=len(results))
            if res.driver == "python threads" and ceiling:
                figs["generator_share"] = rate / ceiling
            lat = res.latency_ns()
            done = figs["completed_fraction"] or 0
            p99 = figs["p99_s"]
            ok = not res.stopped_early and done == 1 and p99 is not None and p99 <= budget
            results[rate] = res
            return ok, {k: v for k, v in figs.items() if k != "cpu_by_role_ms"} | {"n": int(len(lat))}

        # start near what one caller does back to back, half of it: most strategies pass there
        start = max(o["min_rate"], min(max_rate, 0.5 / max(ctx.per_call_s, 1e-6)))
        # the Python driver is never asked for more than a safe share of its own ceiling
        cap = max_rate
        if ceiling and not _foreign(ctx):
            cap = min(max_rate, SAFE_SHARE * ceiling)
        found = search(window, start, o["precision"], o["max_steps"], o["min_rate"], cap)
        warnings = []
        best = found["max_rps"]
        if best is None:
            warnings.append(f"no rate down to {o['min_rate']:g}/s kept p99 within {budget * 1e3:g} ms")
        elif found["capped"]:
            why = "the Python load generator's safe share" if cap < max_rate else "max_rate"
            warnings.append(f"every rate up to {cap:,.0f}/s ({why}) passed: the capacity is at least that")
        if best is not None:
            res = results[best]
            lat = np.sort(res.latency_ns()) / 1e9
            ci = quantile_ci(lat, 0.99)
            chosen = next(s for s in found["steps"] if s["rate"] == best)
            w = ceiling_warning(ctx, best, res.driver)
            if w:
                warnings.append(w)
        else:  # nothing passed: the figures are the lowest rate's, the least loaded window
            res = results[min(results)] if results else None
            lat = np.sort(res.latency_ns()) / 1e9 if res is not None else np.empty(0)
            ci = None
            chosen = next((s for s in found["steps"] if results and s["rate"] == min(results)), {})
        if not len(lat):
            raise RuntimeError("no request completed in any window of the search")
        detail = {"budget_s": budget, **found, "p99_ci": ci, "confident": bool(ci and ci[1] <= budget),
                  "cpu_ms_per_inference": chosen.get("cpu_ms_per_inference"), "driver": res.driver,
                  "warnings": warnings, "generator_ceiling_rps": ceiling}
        reason = (f"{len(found['steps'])} windows; highest passing {best:,.0f}/s" if best is not None else
                  f"{len(found['steps'])} windows; none passed") + (f", lowest failing {found['failed_at']:,.0f}/s" if found["failed_at"] else "")
        ns = (lat * 1e9).astype(np.int64)
        return Measured(ns, len(ns), float(lat.sum()),
                        {"converged": best is not None and not found["capped"], "rounds": len(found["steps"]),
                         "wall_s": sum(s.get("requests", 0) / s["rate"] for s in found["steps"]), "stop_reason": reason},
                        calls_per_s=chosen.get("achieved_rps"),
                        figures={"max_rps_within_slo": best if best is not None else 0.0,
                                 "offered_rps": chosen.get("offered_rps"), "achieved_rps": chosen.get("achieved_rps"),
                                 "late_fraction": chosen.get("late_fraction")},
                        detail=detail,
                        cpu_s=chosen["cpu_ms_per_inference"] / 1e3 * len(ns) if chosen.get("cpu_ms_per_inference") else math.nan)

    def describe(self, result: CellResult) -> str:
        d = result.detail
        if "max_rps" not in d:
            return ""
        budget = d["budget_s"] * 1e3
        if d["max_rps"] is None:
            return f"no rate within p99 {budget:g}ms"
        ci = d.get("p99_ci")
        return (f"{'>=' if d.get('capped') else ''}{d['max_rps']:,.0f}/s within p99 {budget:g}ms"
                + (f" (p99 there {ci[0] * 1e3:.2f}-{ci[1] * 1e3:.2f}ms)" if ci else "")
                + (f", {d['failed_at']:,.0f}/s failed" if d.get("failed_at") else "") + f", {len(d['steps'])} windows")

    def report(self, rows: list[dict[str, Any]], results: list[CellResult], options: dict[str, Any]) -> Section | None:
        ok = [r for r in results if r.ok and "max_rps" in r.detail]
        if not ok:
            return None
        budget = options.get("p99") or ok[0].detail["budget_s"]
        part = Section("slo", f"The highest request rate within a p99 of {budget * 1e3:g} ms")
        part.text.append(
            f"Per strategy, a search over open-loop rates ({options.get('arrival', 'poisson')} arrivals, each window "
            f"at least {options.get('min_duration_s', 1):g} s and {options.get('min_requests', 600)} requests, "
            f"{options.get('callers', 4)} callers) for the highest rate whose p99 from arrival is within the budget. "
            "*confident* means the p99's whole 95% interval at that rate is within it; *failed at* is the lowest rate "
            "that did not hold, so the capacity lies between the two. CPU is per inference at that rate, summed over "
            "every process of the route (what it leaves for the application).")
        rows_out, curves = [], {}
        for r in sorted(ok, key=lambda r: (r.cell.model, r.cell.batch, -(r.detail["max_rps"] or 0))):
            c, d = r.cell, r.detail
            ci = d.get("p99_ci")
            rows_out.append([c.model, str(c.batch), c.strategy,
                             ("≥" if d.get("capped") else "") + (f"{d['max_rps']:,.0f}" if d["max_rps"] is not None else "none"),
                             f"{d['failed_at']:,.0f}" if d.get("failed_at") else "-",
                             f"{ci[0] * 1e3:.2f}-{ci[1] * 1e3:.2f}" if ci else "-",
                             "yes" if d.get("confident") else "no",
                             f"{d['cpu_ms_per_inference']:.2f}" if d.get("cpu_ms_per_inference") is not None else "-",
                             str(len(d["steps"])), d.get("driver", "")])
            pts = sorted((s["rate"], s["p99_s"]) for s in d["steps"] if s.get("p99_s") is not None and not s.get("stopped_early"))
            if pts:
                curves.setdefault(c.model, {})[f"b{c.batch} {c.strategy}"] = pts
        part.tables.append(Table(["model", "batch", "strategy", "highest rate/s", "failed at/s", "p99 there (95% CI) ms",
                                      "confident", "CPU ms/inference", "windows", "callers run by"], rows_out))
        for model, series in curves.items():
            part.figures.append(Curve(f"slo_{model}", "offered rate (requests/s)", f"{model}: p99 from arrival", series,
                                     hline=budget, hline_label="budget", y_seconds=True, log_y=True))
        for r in ok:
            part.text.extend(f"Note ({r.id}): {w}" for w in r.detail.get("warnings", []))
        return part


def _foreign(ctx: Context) -> bool:
    """Whether the session's own runtime serves arrivals (then the Python generator's ceiling is not its)."""
    return bool(getattr(ctx.session, "runs_arrivals", False))
