"""The report's sections, built once from a run and rendered as HTML or Markdown."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from bench import allocator, record, rematch
from bench.constraints import can_call
from bench.record import CellResult
from bench.results import RunDir
from bench.stats import min_samples_for
from reports import crossovers, plots, scorecard
from reports.claims import answer as answer_claims
from reports.decision import LANGUAGE_NAMES, NOT_MEASURED, Block, Capacity, Constraints, decide
from reports.decision import to_json as decision_json
from reports.tables import (
    BASELINE,
    allocator_flips,
    decisions,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    fmt_sig,
    main_cells,
    payload_fits,
)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    bad_rows: set[int] = field(default_factory=set)  # highlighted (invalid, error)
    align_numbers: bool = True  # right-align numeric cells (not in key/value tables)
    title: str = ""  # a caption above the table, where a section holds several
    scroll: bool = True  # a long table scrolls in its own box (False: shown whole, e.g. the scorecard)


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs; **bold** allowed
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)  # (summary, preformatted text)
    in_markdown: bool = True


@dataclass
class Report:
    title: str
    subtitle: str
    warnings: list[str]
    sections: list[Section]
    decision: dict[str, Any] = field(default_factory=dict)  # decision.json


def _mb(v: float | None) -> str:
    return fmt_num(v, 1)


def _tail(v: float | None) -> str:
    return "n/e" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt_ms(v)


def _tail_ci(lo: float | None, hi: float | None, value: float | None) -> str:
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "-" if _tail(value) == "n/e" else "not recorded"  # results from before intervals were kept
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


def _inputs_text(cfg: dict[str, Any]) -> str:
    """How each model's inputs were generated: the spec with value ranges, and the seed."""
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.specs import ModelSpec

    custom = {k: ModelSpec.from_json(v) for k, v in (cfg.get("custom_models") or {}).items()}
    parts = []
    for name in dict.fromkeys([*(cfg.get("models") or []), *(["identity"] if cfg.get("payload_sizes") else [])]):
        spec = custom.get(name) or BUILTIN_MODELS.get(name)
        if spec is None:
            continue
        parts.append(f"{name}: " + "; ".join(
            t.describe() + (" padding mask (rows of ones, then zeros, at least half ones)" if t.kind == "padding_mask"
                            else f" uniform in [{t.low:g}, {t.high:g})") for t in spec.inputs))
    return " | ".join(parts) + f" (generated from seed {cfg.get('seed', 0)}; the same inputs for every strategy)"


def _first_line(s: Any, n: int = 140) -> str:
    s = "" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s)
    return s.splitlines()[0][:n] if s else ""


def build(run: RunDir, decision: dict[str, Any] | None = None) -> Report:
    meta = run.meta()
    env = meta.get("environment", {})
    cfg = meta.get("config", {})
    cells = run.load_cells(samples=True)  # the cells, each cell's parts (length buckets) inside it
    results_every = record.with_parts(cells)  # the cells and, after each, its parts as rows of their own
    df_every = run.frame()
    # the standing sections read the scenarios made for them; every other scenario has its own part
    from bench import scenarios

    with contextlib.suppress(Exception):  # a plugin gone since the run: its cells still show in the tables
        scenarios.discover(cfg.get("plugins") or [])
    standing = {n for n in scenarios.names() if scenarios.get(n).fixed_sections}
    results = [r for r in results_every if r.cell.scenario in standing]
    df = df_every[df_every.scenario.isin(standing)].reset_index(drop=True)
    # Several allocator policies: the decision and the latency table show every one; the other
    # sections show the first (the run's primary policy), so each figure compares like with like.
    policies = [p for p in allocator.of_run(cfg)] if len(allocator.of_run(cfg)) > 1 else []
    df_all = df
    if policies:
        df = df[df.malloc == policies[0]].reset_index(drop=True)
        results = [r for r in results if r.cell.malloc == policies[0]]
    cmap = plots.colors(sorted(set(df.strategy)) or [BASELINE])
    valid = df[df.valid]
    main = main_cells(df)
    main_valid = main[main.valid]
    sections: list[Section] = []

    # -- warnings ---------------------------------------------------------------------------------
    warnings = []
    parts = {r.id for r in results_every if r.part_of}  # a cell's length buckets: rows, not cells
    df_cells = df_every[~df_every.cell_id.isin(parts)]
    expected = len(meta.get("cells", [])) or len(df_cells)
    if meta.get("status") != "complete" or len(df_cells) < expected:
        warnings.append(f"Run status is **{meta.get('status', '?')}**: {len(df_cells)} of {expected} cells measured "
                        f"(`python -m bench run --resume {run.path}` finishes it).")
    if getattr(run, "unreadable", None):
        warnings.append(f"{len(run.unreadable)} cell file(s) could not be read and are left out: "
                        f"{', '.join(run.unreadable[:6])}{' ...' if len(run.unreadable) > 6 else ''} "
                        f"(`python -m bench run --resume {run.path}` measures them again).")
    for status, what in (("invalid", "gave wrong outputs and are not ranked"), ("error", "failed"),
                         ("skipped", "were skipped"),
                         ("unsupported", "are routes built not to take some of the shapes asked of them (they said so)")):
        n = int((df_cells.status == status).sum())
        if n:
            warnings.append(f"{n} cell(s) {what}: {', '.join(df_cells[df_cells.status == status].cell_id[:6])}"
                            + (" ..." if n > 6 else ""))
    noisy = valid[valid.noisy == True]  # noqa: E712
    if len(noisy):
        warnings.append(f"{len(noisy)} cell(s) have an IQR above 10% of the median: compare their percentiles, "
                        f"not only medians ({', '.join(noisy.cell_id[:5])}{' ...' if len(noisy) > 5 else ''}).")
    sessions: dict[str, dict[str, Any]] = {}
    per_model: dict[tuple[str, str], dict[str, str]] = {}  # (model, strategy) -> facts that depend on the model
    for r in results:
        if r.session:
            facts = dict(r.session)
            model_facts = facts.pop("per model", None)
            sessions.setdefault(r.cell.strategy, facts)
            if isinstance(model_facts, dict):
                per_model.setdefault((r.cell.model, r.cell.strategy), model_facts)
    remote = {s: d for s, d in sessions.items() if d.get("remote")}
    if remote:
        warnings.append("Measured against a server started elsewhere: " + "; ".join(
            f"**{s}** via {d.get('transport')}" for s, d in sorted(remote.items()))
            + ". Their latency includes that network; their memory counts only this machine's client.")
    if env.get("git", {}).get("dirty"):
        warnings.append("The working tree had uncommitted changes when this run started.")

    # -- decision by caller language ------------------------------------------------------------
    constraints = Constraints.from_json(decision if decision is not None else cfg.get("decision"))
    facts = _strategy_facts(meta, set(df_all.strategy))
    blocks = decide(df_all, facts, constraints, capacity=_capacity(results_every), rematch=rematch.load(run.path))
    decision_sec, every_route = _decision_section(blocks, constraints, facts, bool(policies))
    sections.append(decision_sec)
    fits = payload_fits(df)
    measured_max = {s: float(g.payload_bytes.max()) for s, g in df[df.model == "identity"].groupby("strategy")} \
        if "payload_bytes" in df else {}
    crossing = ([crossovers.payload_crossover(f, s, measured_max_bytes=measured_max.get(s)) for s, f in sorted(fits.items())],
                crossovers.ranking_switches(df, facts, constraints.tie_within))
    crossing_sec = _crossover_section(*crossing)

    # -- one screen per model ----------------------------------------------------------------------
    sec = Section("scorecard", "Scorecard")
    capacity = _capacity(results_every)
    for card in scorecard.cards(df, results, facts, capacity):
        sec.tables.append(Table(
            ["strategy", "p50", "p99", "best samples/s", "rate within p99 budget", "CPU/inference", "memory added",
             "ready (warm cache)", "Python at deployment", "artifact", "correct (max abs error)"],
            [[r.strategy, fmt_ms(r.p50_ms), _tail(r.p99_ms) if r.p50_ms is not None else "-",
              f"{fmt_sig(r.throughput_sps)} ({r.throughput_callers} caller{'s' if r.throughput_callers != 1 else ''})"
              if r.throughput_sps else "-",
              f"{r.max_rps:,.0f}/s" if r.max_rps else ("not measured" if r.p50_ms is not None else "-"),
              fmt_ms(r.cpu_ms_per_inference), f"{r.mem_added_mb:,.0f} MiB" if r.mem_added_mb is not None else "-",
              fmt_ms(r.ready_s * 1e3) if r.ready_s is not None else "-",
              {True: "yes", False: "no", None: "-"}[r.python_at_deployment], r.artifact, r.correctness]
             for r in card.rows],
            bad_rows={i for i, r in enumerate(card.rows) if r.status != "ok"}, scroll=False,
            title=f"{card.model}, batch {card.batch}, {card.threads} thread{'s' if card.threads != 1 else ''}"
                  + (f", {policies[0]}" if policies else "")))
    if sec.tables:
        sec.text.append("Per model, at its smallest batch: what a review asks first, fastest first. *best samples/s* "
                        "is the highest throughput over the caller counts measured; *rate within p99 budget* comes "
                        "from the slo scenario where it ran; *ready* is cold start from a warm artifact cache "
                        "(interpreter to first call). The sections below hold the details.")
        sections.append(sec)
    sections += [crossing_sec, every_route]

    # -- the claims users arrive with, answered from this run ----------------------------------
    sec = Section("claims", "The common claims, answered by this run")
    sec.text.append("What articles and answers say about each route, against this run's own cells (one caller; "
                    "ratios are medians over the model and batch cells both routes ran).")
    sec.tables.append(Table(["claim", "this run"], [[c.claim, c.answer] for c in answer_claims(df, payload_fits(df))],
                            align_numbers=False))
    sections.append(sec)

    # -- decision summary -----------------------------------------------------------------------
    sec = Section("decision", "Every strategy ranked")
    decs = decisions(df_all)
    if decs:
        sec.text.append(
            "Per model and batch size, one caller: strategies ranked by median latency; the ratio is "
            "against in-process eager torch for the same cell (below 1.00x is faster than torch). "
            "Cells with wrong outputs are never ranked.")
        rows = []
        for d in decs:
            ranking = "; ".join(f"{s} {fmt_ms(p)}" + (f" ({fmt_ratio(r)})" if r is not None and s != BASELINE else "")
                                for s, p, r in d.ranking)
            rows.append([d.model, str(d.batch), str(d.threads)] + ([d.malloc] if policies else [])
                        + [d.winner or "-", fmt_ms(d.winner_p50_ms), fmt_ratio(d.margin) if d.margin else "-", ranking,
                           "; ".join(f"{s} ({why})" for s, why in d.excluded) or "-"])
        sec.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                + ["winner", "winner p50", "lead over 2nd", "ranking (p50, vs torch)", "not ranked"], rows))
        flips = allocator_flips(decs)
        if policies:
            sec.text.append(f"Measured under {len(policies)} allocator policies ({', '.join(policies)}); the "
                            f"sections after this one show the first, {policies[0]}. "
                            + ("**Rankings that change with the allocator:** " + " ".join(f"{f}." for f in flips)
                               if flips else "No winner changes with the allocator."))
            warnings.extend(f"Allocator-dependent ranking: {f}." for f in flips)
        sec.text.extend(f"{d.model}, batch {d.batch}" + (f", {d.malloc}" if policies else "") + f": {d.sentence()}."
                        for d in decs)
    conc = main_valid[main_valid.concurrency > 1]
    if len(conc):
        best = main_valid.loc[main_valid.groupby("model").throughput_sps.idxmax()]
        sec.text.append("Highest throughput per model over every batch size and caller count: " + "; ".join(
            f"{r.model}: **{r.strategy}** {fmt_sig(r.throughput_sps)} samples/s (batch {r.batch}, {r.concurrency} callers)"
            for r in best.itertuples()) + ".")
    if fits:
        sec.text.append("Marshaling (identity model): " + "; ".join(
            f"{s} costs {fmt_ms(f.fixed_s * 1e3)} per call + "
            + ("nothing measurable per byte" if math.isinf(f.bandwidth_Bps) else f"{fmt_ms(1e12 / f.bandwidth_Bps)} per GB ({f.bandwidth_text()})")
            for s, f in sorted(fits.items())) + ".")
    sections.append(sec)

    # -- latency ---------------------------------------------------------------------------------
    # -- each other scenario's own part (open-loop, slo, plug-ins) ------------------------------------
    options = cfg.get("scenario_options") or {}
    for name in cfg.get("scenarios") or []:
        if name in standing or name not in scenarios.names():
            continue
        mine = [r for r in cells if r.cell.scenario == name]  # its cells, parts inside (record.with_parts() gives them apart)
        part = scenarios.get(name).report(df_every[df_every.scenario == name].to_dict("records"), mine, options.get(name, {}))
        if part is not None:
            sections.append(_part_section(part, cmap))

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
                     _tail(r.p90_ms), _tail(r.p99_ms), _tail_ci(r.p99_ci_low_ms, r.p99_ci_high_ms, r.p99_ms),
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
    sections.append(sec)

    # -- throughput ------------------------------------------------------------------------------
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
         fmt_ms(r.p50_ms), _tail(r.p99_ms)] for r in main_valid.itertuples()]))
    sections.append(sec)

    # -- overhead vs torch -------------------------------------------------------------------------
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
    sections.append(sec)

    # -- payload sweep -----------------------------------------------------------------------------
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
    sections.append(sec)

    # -- memory --------------------------------------------------------------------------------------
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
    sections.append(sec)

    # -- cold start ----------------------------------------------------------------------------------
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
    sections.append(sec)

    # -- breakdown -----------------------------------------------------------------------------------
    phase_rows = [(r.id, {k: v.p50 for k, v in r.phases.items()}, r.latency.p50)
                  for r in results if r.phases and r.ok]
    if phase_rows:
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
        sections.append(sec)

    # -- how each route ran each model ---------------------------------------------------------------
    if per_model:
        sec = Section("artifacts", "How each route ran each model")
        sec.text.append("What a strategy chose or found for each model: the ONNX file and optimization level every "
                        "ONNX Runtime route runs (the fastest correct of every exporter and level, timed side by "
                        "side when the artifact was built, with what the others cost), and what other runtimes "
                        "did with the model.")
        shared: dict[tuple[str, str], list[str]] = {}  # routes with the same facts for a model share rows
        for (m, st), facts in sorted(per_model.items()):
            shared.setdefault((m, json.dumps(facts, default=str)), []).append(st)
        sec.tables.append(Table(["model", "strategy", "fact", "value"], [
            [m, ", ".join(sts), k, str(v)] for (m, facts), sts in shared.items() for k, v in json.loads(facts).items()],
            align_numbers=False))
        sections.append(sec)

    # -- correctness ---------------------------------------------------------------------------------
    sec = Section("correctness", "Correctness against eager torch")
    rows, bad = [], set()
    checked = [(r, r.correctness) for r in results_every if r.correctness is not None]
    for r, corr in checked:
        if not corr.ok:
            bad.add(len(rows))
        for name, o in corr.outputs.items():
            w = o.worst  # bench.correctness's worst element: a plain dict
            rows.append([r.id, name, "x".join(map(str, o.shape)), o.dtype,
                         f"{o.max_abs:.2e}" if o.max_abs is not None else "-",
                         f"{w['error']:.2e} of {w['allowed']:.2e} ({w['used']:.1%})" if w else "-",
                         f"{corr.atol:g} + {corr.rtol:g} x |ref|", "ok" if o.ok else "WRONG"])
    n_ok = sum(1 for _, corr in checked if corr.ok)
    sec.text.append(f"Every output of the first and the last call is compared with eager torch on the same "
                    f"inputs. Each element may differ by atol + rtol x |reference| (numpy.allclose's rule); the "
                    f"worst element is the one that uses the largest share of its own allowance. {n_ok} of {len(checked)} "
                    "checked cells are correct.")
    sec.tables.append(Table(["cell", "output", "shape", "dtype", "max abs err", "worst element: error of allowed",
                             "tolerance per element", "result"], rows, bad))
    sections.append(sec)

    # -- errors ----------------------------------------------------------------------------------------
    failed = [r for r in results_every if not r.ok]  # error, skipped, invalid, unsupported
    if failed:
        sec = Section("errors", "Failed, invalid and skipped cells")
        sec.tables.append(Table(["cell", "status", "reason"], [[r.id, str(r.status), _first_line(r.error, 300)]
                                                               for r in failed], set(range(len(failed)))))
        sec.details = [(r.id, r.traceback) for r in failed if r.traceback]
        sections.append(sec)

    # -- environment -----------------------------------------------------------------------------------
    sec = Section("environment", "Environment")
    pk = env.get("packages", {})
    git = env.get("git", {})
    sampling = cfg.get("sampling", {})
    kv = [
        ("CPU", f"{env.get('cpu_model', '?')} ({env.get('logical_cores')} logical, {env.get('physical_cores')} physical cores)"),
        ("memory", f"{env.get('memory_gb')} GB"), ("OS", env.get("os", "?")), ("Python", env.get("python", "?")),
        ("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v != "not installed")),
        ("strategy runtimes", "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
                                        for s, vs in env.get("strategy_runtimes", {}).items())),
        ("threads", f"intra-op threads per cell as listed (every runtime set explicitly); thread counts in this run: "
                    f"{cfg.get('threads')}; the workers' own environment: " + (", ".join(
                        sorted({f"{k}={v}" for r in results for k, v in r.thread_env.items()}))
                        or "not recorded (results from before it was)")),
        ("inputs", _inputs_text(cfg)),
        ("git", f"{git.get('commit') or 'not a git checkout'}" + (f" on {git.get('branch')}" if git.get("branch") else "")
         + (" (dirty)" if git.get("dirty") else "")),
        ("profile", f"{cfg.get('profile')}; sampling: " + ", ".join(f"{k}={v}" for k, v in sampling.items())),
        ("CPU pinning", f"each cell's processes on CPUs {cfg['cpus']}" if cfg.get("cpus") else "none (the OS schedules freely)"),
        ("allocator", "; ".join(allocator.describe(p) for p in allocator.of_run(cfg))
         + ("; each cell names its policy" if len(allocator.of_run(cfg)) > 1 else "")),
        ("seed", str(cfg.get("seed"))), ("host", env.get("hostname", "?")), ("CI", str(env.get("ci"))),
    ] + [(f"session: {s}", ", ".join(f"{k} {v}" for k, v in d.items())) for s, d in sorted(sessions.items())]
    sec.tables.append(Table(["", ""], [[k, str(v)] for k, v in kv], align_numbers=False))
    sections.append(sec)

    started = meta.get("started")
    when = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started else "?"
    return Report(
        title="PyTorch integration strategies: benchmark report",
        subtitle=f"run {run.id} · {when} · {env.get('cpu_model', '?')} · {len(df_cells)} cells "
                 f"({int(df_cells.valid.sum())} valid) · profile {cfg.get('profile', '?')}",
        warnings=warnings, sections=sections,
        decision=decision_json(blocks, constraints, crossing),
    )


def _part_section(part: Any, cmap: dict[str, str]) -> Section:
    """A scenario's report part (bench.scenarios.Part, plain data) as a section with tables and plots."""
    sec = Section(part.key, part.title, list(part.text))
    for t in part.tables:
        sec.tables.append(Table(list(t.header), [list(map(str, row)) for row in t.rows], title=t.caption))
    for c in part.curves:
        sec.figures.append(Figure(c.name, plots.curve(c, cmap), c.title or (c.ylabel + " against " + c.xlabel)))
    return sec


def _strategy_facts(meta: dict[str, Any], names: set[str]) -> dict[str, dict[str, Any]]:
    """What each strategy is (languages, Python at deployment, artifact): as the run recorded it, else
    (a run from before it did) as the registry says now."""
    import strategies

    facts = dict(meta.get("strategies") or {})
    for name in {n.partition("@")[0] for n in names} | set(strategies.names()):  # the rest: "not measured in this run"
        if name not in facts:
            try:
                facts[name] = strategies.get(name).facts()
            except Exception:  # a plugin strategy not loaded here: decided as a Python route
                facts[name] = {}
    return facts


def _decision_section(blocks: list[Block], constraints: Constraints, facts: dict[str, dict[str, Any]],
                      policies: bool) -> tuple[Section, Section]:
    """The decision (what each language should use, the ties explained) and, apart, every route ranked per language."""
    sec = Section("caller", "Decision by caller language")
    every = Section("every-route", "Every route, by caller language")
    every.text.append("The full ranking behind the decision: per caller language, every route it can call, with p99, "
                      "the side-by-side ratio where close leads were measured again, and the rest with their reasons.")
    sec.text.append("Per caller language, model and batch size, one caller: the fastest route that language can call "
                    f"(median latency), and what runs second. Constraints: {constraints.describe()}. Where leads were "
                    "close, the contenders were measured again after the matrix, opened together in warm workers and "
                    "timed in alternating rounds (A B, B A, ...) so that drift on the machine hits them alike; that "
                    "*side by side* ratio orders them. `=` marks a tie with the first.")
    glance: dict[tuple[str, int, int, str], dict[str, str]] = {}
    for b in blocks:
        for c in b.cells:
            glance.setdefault((c.model, c.batch, c.threads, c.malloc), {})[b.caller] = c.short()
    if glance:
        callers = [b.caller for b in blocks]
        sec.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                + [LANGUAGE_NAMES[x].split(" (")[0] for x in callers],
                                [[m, str(bt), str(t)] + ([a] if policies else []) + [g.get(x, "-") for x in callers]
                                 for (m, bt, t, a), g in glance.items()], align_numbers=False, scroll=False,
                                title="At a glance: the fastest route each language can call (next: the runner-up's time)"))
    for b in blocks:
        who = LANGUAGE_NAMES[b.caller]
        cannot = sorted(n for n, f in facts.items() if f is not None and not can_call(f, b.caller))
        rows = []
        for c in b.cells:
            ranked = "; ".join(("= " if r.tie_with_first else "") + f"{r.strategy} {fmt_ms(r.p50_ms)}"
                               + (f" (p99 {fmt_ms(r.p99_ms)})" if r.p99_ms is not None else "")
                               + (f" [side by side {r.paired_ratio:.3f}x the first, 95% {r.paired_low:.3f}-{r.paired_high:.3f}]"
                                  if r.paired_ratio else "")
                               + (f" [{r.max_rps:,.0f}/s within the p99 budget]" if r.max_rps else "")
                               + (f" [{r.note}]" if r.note else "") for r in c.eligible) or "-"
            other = [f"{s}: {why}" for s, why in c.excluded
                     if can_call(facts.get(s.partition("@")[0]) or {}, b.caller) and why != NOT_MEASURED]
            rows.append([c.model, str(c.batch), str(c.threads)] + ([c.malloc] if policies else [])
                        + [ranked, "; ".join(other) or "-"])
            if len(c.leaders) > 1 or any(r.paired_ratio for r in c.eligible):  # what needs words: ties, rematches
                sec.text.append(f"From {who}, {c.model} batch {c.batch}" + (f", {c.malloc}" if policies else "")
                                + f": {c.sentence()}.")
        if cannot:
            every.text.append(f"A {who} application cannot call: {', '.join(cannot)}.")
        unmeasured = sorted({s for c in b.cells for s, why in c.excluded if why == NOT_MEASURED})
        if unmeasured:
            sec.text.append(f"{who} routes not measured in this run: {', '.join(unmeasured)}.")
        every.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                  + [f"{who}: ranked (p50)", "not ranked here, and why"], rows,
                                  title=f"{who}: every route, ranked"))
    return sec, every


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


def _crossover_section(payload: list[crossovers.PayloadCrossover], switches: list[crossovers.Switch]) -> Section:
    sec = Section("crossovers", "Crossovers")
    sec.text.append("Where the answer changes, read off this run's measurements. Payload: above what size a route's "
                    f"fixed cost per call falls under {crossovers.FIXED_SHARE:.0%} of the call (from the fit of the "
                    "identity model's payload sweep: latency = fixed + bytes x per-byte). Ranking: the batch size and "
                    "the number of callers at which another route a language can call takes the lead.")
    if payload:
        sec.tables.append(Table(["strategy", "fixed cost", "per MiB", f"fixed cost under {crossovers.FIXED_SHARE:.0%} above"], [
            [p.strategy, fmt_ms(p.fixed_s * 1e3), fmt_ms(p.per_byte_s * 2**20 * 1e3) if p.per_byte_s else "nothing measurable",
             "never (no per-byte cost measured)" if p.bytes is None else
             _size(p.bytes) + ("" if p.inside_measured or p.measured_max_bytes is None
                               else f" (beyond the largest payload measured, {_size(p.measured_max_bytes)})")]
            for p in payload], title="Payload size", scroll=False))
    else:
        sec.text.append("Payload: not measured in this run (no payload sweep).")
    if switches:
        sec.tables.append(Table(["caller", "model", "axis", "what changes"],
                                [[LANGUAGE_NAMES[s.caller].split(" (")[0], s.model,
                                  "batch size" if s.axis == "batch" else "callers (throughput)", s.text()]
                                 for s in switches], align_numbers=False, title="Ranking"))
    else:
        sec.text.append("Ranking: no route a language can call takes the lead from another at any batch size or caller "
                        "count measured in this run.")
    return sec


def _size(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{n:.0f} B"


def _capacity(results: list[CellResult]) -> dict[tuple[str, int, int, str, str], Capacity]:
    """The slo scenario's answers by (model, batch, threads, allocator, strategy), for the decision."""
    out = {}
    for r in results:
        d, c = r.detail, r.cell
        if r.ok and "max_rps" in d and d.get("budget_s"):
            key = (c.model, c.batch, c.threads, c.malloc, c.strategy)
            out[key] = Capacity(d["max_rps"], d["budget_s"] * 1e3, bool(d.get("capped")))
    return out

