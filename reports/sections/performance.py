"""The measurement sections: latency, throughput, overhead against torch, the payload sweep, memory, cold
start, and where the time of a call goes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench.record import CellResult
from bench.sections import Figure, Section, Table
from bench.stats import min_samples_for
from reports import plots
from reports.tables import BASELINE, fmt_ms, fmt_num, fmt_ratio, fmt_sig, fmt_tail

if TYPE_CHECKING:
    from reports.content import Inputs


def latency(x: Inputs) -> list[Section]:
    """Every sample of each cell, p50 and the tails with their intervals."""
    main_valid, results, cmap, df_all = x.main_valid, x.results, x.cmap, x.df_all
    sec = Section("latency", "Latency")
    if len(main_valid):
        b0 = int(main_valid.batch.min())
        c0 = int(main_valid.concurrency.min())
        samples = {(r.cell.model, r.cell.strategy): np.asarray(r.samples_ns or [], dtype=np.int64)
                   for r in results if r.ok and r.cell.batch == b0
                   and r.cell.concurrency == c0 and r.cell.model != "identity"}
        models = list(dict.fromkeys(main_valid.model))
        sec.figures.append(Figure("latency_distributions", plots.latency_distributions(
            samples, models, cmap, f"Latency distribution, batch {b0}, {c0} caller(s)"), "Every sample of each cell."))
        single = main_valid[main_valid.concurrency == c0]
        sec.figures.append(Figure("p50_p99", plots.p50_p99(single, cmap), "Median and tail per batch size."))
    rows, bad = [], set()
    for r in df_all.itertuples():
        if r.status not in ("ok", "invalid"):
            continue
        if r.status == "invalid":
            bad.add(len(rows))
        rows.append([r.model, r.strategy + (f" [{r.malloc}]" if r.malloc else ""), str(r.batch), str(r.threads), str(r.concurrency), fmt_ms(r.p50_ms),
                     f"±{r.rel_ci * 100:.1f}%" if pd.notna(r.rel_ci) else "-",
                     fmt_tail(r.p90_ms), fmt_tail(r.p99_ms), _tail_ci(r.p99_ci_low_ms, r.p99_ci_high_ms, r.p99_ms),
                     fmt_ms(r.max_ms), fmt_ms(r.mean_ms), fmt_ms(r.iqr_ms), fmt_num(r.samples),
                     fmt_ms(r.cpu_ms_per_inference),
                     ("noisy" if r.noisy else "") + ("" if r.converged else " budget"), r.status])
    sec.tables.append(Table(["model", "strategy", "batch", "thr", "callers", "p50", "p50 CI", "p90", "p99",
                             "p99 95% CI", "max", "mean", "IQR", "n", "CPU/call", "flags", "status"], rows, bad))
    sec.text.append(f"p50 CI: half-width of the median's 95% confidence interval, relative to it. A tail "
                    f"percentile is shown only when the samples bound it: its 95% interval from order statistics "
                    f"must lie inside the sample, which takes {min_samples_for(0.9)} samples for p90 and "
                    f"{min_samples_for(0.99)} for p99. Below that it reads *n/e* (not estimable) and the slowest "
                    "sample is shown as what it is, the max. *CPU/call*: CPU time of every process of the route "
                    "(worker, server, runtime threads; from the kernel) per call; above the latency, the route "
                    "kept more than one core busy. Flags: *noisy* when IQR > 10% of the median; "
                    "*budget* when sampling hit its time budget before the median settled.")
    return [sec]


def throughput(x: Inputs) -> list[Section]:
    """Samples per second against batch size and callers."""
    main_valid, cmap = x.main_valid, x.cmap
    sec = Section("throughput", "Throughput")
    one = main_valid[main_valid.concurrency == main_valid.concurrency.min()] if len(main_valid) else main_valid
    if len(one) and one.batch.nunique() > 1:
        sec.figures.append(Figure("throughput_batch", plots.lines_by(
            one, "batch", "throughput_sps", cmap, "batch size", "samples/s", yfmt=lambda v: f"{v:,.0f}"),
            "Samples per second against batch size, one caller."))
    if len(main_valid) and main_valid.concurrency.nunique() > 1:
        b0 = int(main_valid.batch.min())
        cb = main_valid[main_valid.batch == b0]
        sec.figures.append(Figure("throughput_concurrency", plots.lines_by(
            cb, "concurrency", "throughput_sps", cmap, "concurrent callers", "samples/s", yfmt=lambda v: f"{v:,.0f}"),
            f"Samples per second against concurrent callers (batch {b0}), closed loop as in perf_analyzer."))
        sec.figures.append(Figure("latency_concurrency", plots.lines_by(
            cb.assign(p99_s=cb.p99_ms / 1e3), "concurrency", "p99_s", cmap, "concurrent callers", "p99 latency",
            yfmt=plots._fmt_s), f"Tail latency under concurrent callers (batch {b0})."))
    sec.tables.append(Table(["model", "strategy", "batch", "callers", "samples/s", "calls/s", "p50", "p99"], [
        [r.model, r.strategy, str(r.batch), str(r.concurrency), fmt_sig(r.throughput_sps), fmt_sig(r.calls_per_s),
         fmt_ms(r.p50_ms), fmt_tail(r.p99_ms)] for r in main_valid.itertuples()]))
    return [sec]


def overhead(x: Inputs) -> list[Section]:
    """Median latency over in-process torch's for the same cell."""
    main_valid, cmap = x.main_valid, x.cmap
    sec = Section("overhead", "Overhead against in-process torch")
    ov = main_valid[main_valid.vs_torch_p50.notna() & (main_valid.concurrency == main_valid.concurrency.min())]
    if len(ov[ov.strategy != BASELINE]):
        sec.figures.append(Figure("overhead", plots.overhead(ov, cmap), "Median latency over torch's for the same cell."))
        base = ov[ov.strategy == BASELINE].set_index(["model", "batch", "threads"]).p50_ms
        sec.tables.append(Table(["model", "batch", "strategy", "p50", "torch p50", "difference", "ratio"], [
            [r.model, str(r.batch), r.strategy, fmt_ms(r.p50_ms), fmt_ms(base[(r.model, r.batch, r.threads)]),
             ("+" if r.p50_ms >= base[(r.model, r.batch, r.threads)] else "-") + fmt_ms(abs(r.p50_ms - base[(r.model, r.batch, r.threads)])),
             fmt_ratio(r.vs_torch_p50)] for r in ov[ov.strategy != BASELINE].itertuples()]))
    else:
        sec.text.append("Needs valid torch cells beside other strategies.")
    return [sec]


def payload(x: Inputs) -> list[Section]:
    """The identity model's payload sweep and each route's cost fit."""
    valid, fits, cmap = x.valid, x.fits, x.cmap
    sec = Section("payload", "Marshaling cost: payload sweep")
    ident = valid[(valid.model == "identity") & (valid.concurrency == 1)]
    if len(ident):
        sec.text.append("The identity model returns its input, so its latency is the cost of getting the bytes "
                        "in and out. Fit per strategy: latency = fixed cost + bytes / bandwidth (weighted by "
                        "1/latency so small and large payloads count alike); bytes are input plus output.")
        sec.figures.append(Figure("payload_sweep", plots.payload_sweep(ident, fits, cmap), "Median with its 95% CI; lines are the fits."))
        sec.tables.append(Table(["strategy", "fixed cost per call", "bandwidth", "fit R²", "sizes"], [
            [s, fmt_ms(f.fixed_s * 1e3), "∞ (no per-byte cost seen)" if math.isinf(f.bandwidth_Bps) else f.bandwidth_text(),
             "-" if math.isinf(f.bandwidth_Bps) else f"{f.r2:.3f}", str(f.points)] for s, f in sorted(fits.items())]))
        sizes = sorted(ident.payload_bytes.unique())
        strats = sorted(ident.strategy.unique(), key=lambda s: (s != BASELINE, s))
        piv = ident.set_index(["payload_bytes", "strategy"]).p50_ms
        sec.tables.append(Table(["bytes per call"] + strats, [
            [plots._fmt_bytes(b)] + [fmt_ms(piv.get((b, s))) for s in strats] for b in sizes]))
    else:
        sec.text.append("No payload sweep in this run (identity model cells).")
    return [sec]


def memory(x: Inputs) -> list[Section]:
    """RSS of every process a cell uses, and what the runtime and model add."""
    valid, results, cmap = x.valid, x.results, x.cmap
    sec = Section("memory", "Memory")
    mem = valid[valid.concurrency == valid.concurrency.min()] if len(valid) else valid
    mem = mem[mem.model != "identity"] if len(mem[mem.model != "identity"]) else mem
    if len(mem):
        sec.text.append("RSS from the kernel (/proc) of every process a cell uses (a server counts). *Added* is "
                        "steady-state RSS minus the worker's RSS before the strategy opened (inputs already "
                        "built), i.e. what loading this runtime and model costs. Peak is the kernel's high-water "
                        "mark (VmHWM) summed over processes.")
        sec.figures.append(Figure("memory", plots.grouped_bars(mem.assign(added_peak=mem.mem_peak_mb - mem.mem_baseline_mb),
                                                               "added_peak", cmap, "MiB over baseline",
                                                               "Memory added by the strategy: peak (bar), steady (hatched)",
                                                               stacked_under="mem_added_mb"), ""))
    extra_by_cell = {r.id: r.memory.extra if r.memory else {} for r in results}
    sec.tables.append(Table(["model", "strategy", "batch", "callers", "baseline MiB", "steady MiB", "peak MiB",
                             "added MiB", "processes", "runtime figures"], [
        [r.model, r.strategy, str(r.batch), str(r.concurrency), _mb(r.mem_baseline_mb), _mb(r.mem_steady_mb),
         _mb(r.mem_peak_mb), _mb(r.mem_added_mb), fmt_num(r.processes),
         ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in extra_by_cell.get(r.cell_id, {}).items()) or "-"]
        for r in valid.itertuples()]))
    return [sec]


def cold_start(x: Inputs) -> list[Section]:
    """Cold start in the same phases for every route."""
    results = x.results
    sec = Section("coldstart", "Cold start")
    cold = _cold_start_rows(results)
    if cold:
        sec.text.append("Cold start in the same phases for every strategy, so like compares with like: the "
                        "interpreter's start-up, importing the strategy's runtime, building the model (the user's "
                        "factory, where the strategy runs it in the process), opening the session (loading "
                        "artifacts, compiling for the device, starting a server: a server's own imports and model "
                        "build happen here), and the first call. *Ready* is their sum from a warm artifact cache; "
                        "*from nothing* adds building the artifacts (export, lowering, compile), which a cache hit "
                        "skips (the time shown is what it took when it was built; an ONNX route that found the model's "
                        "ONNX export already made by another ONNX route shows only its own step).")
        first_model = cold[0][0]
        sec.figures.append(Figure("cold_start", plots.cold_start_phases(
            [(st, ph, build) for m, st, _, ph, build, _ in cold if m == first_model],
            f"{first_model}: ready from a warm cache (bars) and from nothing (hatched)"), ""))
        names = ["interpreter", "runtime import", "model build", "open", "first call"]
        sec.tables.append(Table(["model", "strategy", "batch", *names, "ready (warm cache)", "export/compile",
                                 "ready from nothing", "artifacts"], [
            [m, st, str(b)] + [fmt_ms(ph[n] * 1e3) if ph.get(n) else "-" for n in names]
            + [fmt_ms(sum(ph.values()) * 1e3), "-" if build is None else fmt_ms(build * 1e3),
               fmt_ms((sum(ph.values()) + (build or 0.0)) * 1e3), state]
            for m, st, b, ph, build, state in cold]))
    return [sec]


def breakdown(x: Inputs) -> list[Section]:
    """The median of each phase of a call, as the route measured it."""
    results, cmap = x.results, x.cmap
    phase_rows = [(r.id, {k: v.p50 for k, v in r.phases.items()}, r.latency.p50)
                  for r in results if r.phases and r.ok]
    if not phase_rows:
        return []
    sec = Section("breakdown", "Where the time goes")
    sec.text.append("Median of each phase of a call, as the strategy measured it (marshal in, transport, "
                    "compute, marshal out). Phase medians need not add up exactly to the call's median.")
    by_model = _breakdown_per_model(results)
    if by_model:
        sec.figures.append(Figure("breakdown", plots.breakdown_per_model(by_model, cmap),
                                  "Per model at its smallest batch: each phase's median, in absolute time"))
    names = list(dict.fromkeys(p for _, ph, _ in phase_rows for p in ph))
    sec.tables.append(Table(["cell", "call p50"] + names, [
        [cid, fmt_ms(total * 1e3)] + [fmt_ms(ph[p] * 1e3) if p in ph else "-" for p in names]
        for cid, ph, total in phase_rows]))
    return [sec]


def _mb(v: float | None) -> str:
    return fmt_num(v, 1)


def _tail_ci(lo: float | None, hi: float | None, value: float | None) -> str:
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "-" if fmt_tail(value) == "n/e" else "not recorded"  # results from before intervals were kept
    return f"{fmt_ms(lo)}-{fmt_ms(hi)}"


def _cold_start_rows(results: list[CellResult]) -> list[tuple[str, str, int, dict[str, float], float | None, str]]:
    """(model, strategy, batch, phases in s, artifact build s or None, cache state) per model and
    strategy, at the smallest batch and caller count; results recorded before the phases existed
    show open and first call only."""
    ok = [r for r in results if r.ok and r.cell.model != "identity" and r.first_call_s]
    if not ok:
        return []
    out = {}
    for r in sorted(ok, key=lambda r: (r.cell.concurrency, r.cell.batch)):
        key = (r.cell.model, r.cell.strategy)
        if key in out:
            continue
        phases = r.cold_start_phases or {"open": r.open_s if r.open_s is not None else 0.0, "first call": r.first_call_s}
        prep = r.prepare
        if prep is None:
            build, state = None, "-"
        else:
            build = prep.built_seconds if prep.cache_hit else prep.seconds
            state = "cache hit" if prep.cache_hit else "built in this run"
        out[key] = (key[0], key[1], r.cell.batch, phases, build, state)
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1] != BASELINE, k[1]))]


def _breakdown_per_model(results: list[CellResult]) -> dict[str, list[tuple[str, dict[str, float], float]]]:
    """model -> (strategy, phase medians in s, call p50 in s) at the model's smallest batch, single caller."""
    ok = [r for r in results if r.phases and r.ok and r.cell.model != "identity" and r.cell.concurrency == 1]
    smallest: dict[str, tuple[int, int]] = {}  # model -> (batch, threads), the smallest of each, as the scorecard
    for r in ok:
        m = r.cell.model
        b, t = smallest.get(m, (r.cell.batch, r.cell.threads))
        smallest[m] = (min(b, r.cell.batch), min(t, r.cell.threads))
    out: dict[str, list[tuple[str, dict[str, float], float]]] = {}
    for r in ok:
        c = r.cell
        if (c.batch, c.threads) == smallest[c.model]:
            out.setdefault(c.model, []).append((c.strategy, {k: v.p50 for k, v in r.phases.items()}, r.latency.p50))
    return {m: sorted(rows, key=lambda x: x[2]) for m, rows in out.items()}
