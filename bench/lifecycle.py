"""A run's lifecycle, below the command line: start or resume it, hold its folder, record its status,
stop cleanly on SIGTERM or a full disk, measure close leads again, publish it (summary, report,
history), hold it to ``--strict``, and gate it against a baseline.

``bench.cli`` parses flags into a ``RunConfig`` and ``RunOptions`` and calls ``start`` or ``resume``;
everything after that lives here, so code that drives the harness (a CI script, a notebook) gets the
same behaviour as the command line without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import strategies
from bench.config import RunConfig, format_size
from bench.record import Cell, Status, with_parts
from bench.results import RunDir, RunLock, check_run_id, resolve_run, summary_frame
from plumbing.errors import UserError
from plumbing.files import WRITE_ERRORS
from strategies.base import RouteTable, base_name

CONFIRM_ATTEMPTS = 3


@dataclass(frozen=True)
class GateOptions:
    """How a run is judged against a baseline (bench.compare)."""

    threshold: float | None = None  # None: compare's default
    concurrent_threshold: float | None = None
    partial_baseline: bool = False
    alpha: float = 0.05

    def thresholds(self) -> tuple[float, float, float, bool]:
        from bench.compare import DEFAULT_CONCURRENT_THRESHOLD, DEFAULT_THRESHOLD

        return (DEFAULT_THRESHOLD if self.threshold is None else self.threshold, self.alpha,
                DEFAULT_CONCURRENT_THRESHOLD if self.concurrent_threshold is None else self.concurrent_threshold,
                self.partial_baseline)


@dataclass(frozen=True)
class RunOptions:
    """What to do with a run besides measuring it."""

    out: Path = Path("results")  # the results root
    run_id: str | None = None  # the folder's name (default: a timestamp)
    shard: str | None = None  # "i/n": only that slice of the matrix
    strict: bool = False  # exit 1 unless every cell is valid
    report: bool = True
    history: str | None = None  # the store to record the run in; None: not recorded
    store: str | None = None  # the store run ids are looked up in (a --baseline), recorded in or not
    baseline: str | None = None  # a run to gate against (folder, id or branch:NAME)
    gate: GateOptions = field(default_factory=GateOptions)


def history_url(given: str | None, out: Path) -> str:
    from bench.history import default_url

    return given or os.environ.get("BENCH_HISTORY") or default_url(out)


def resolve(arg: str | None, out: Path, history: str | None = None):
    """A results folder, a run id under ``out``, latest, or else a run id / branch:NAME in the history store."""
    try:
        return resolve_run(arg, out)
    except UserError as folder_error:
        if not arg or arg == "latest":
            raise
        from bench.history import History

        url = history_url(history, out)
        if not url.startswith("postgres") and not Path(url).exists():
            raise
        h = History.open(url)
        found = h.latest(arg.split(":", 1)[1]) if arg.startswith("branch:") else h.get(arg)
        if found is None:
            raise UserError(f"{folder_error}; nor is {arg!r} in the history store {url}") from None
        return found


def new_run_dir(root: Path, run_id: str | None) -> RunDir:
    base = check_run_id(run_id) if run_id is not None else datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_id and (root / run_id).exists():
        raise UserError(f"results folder {root / run_id} already exists; use --resume {root / run_id} to finish it")
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return RunDir(path)


# -- start and resume ---------------------------------------------------------------------------------

def start(cfg: RunConfig, options: RunOptions) -> int:
    """A new run of ``cfg``: its folder made and held, measured, published and judged. The exit status."""
    run = new_run_dir(options.out, options.run_id)
    held: list[RunLock] = []
    try:
        baseline = resolve(options.baseline, options.out, options.store) if options.baseline else None
        cells = _matrix(cfg, options.shard)
        versions = _versions(cells)
        run.path.mkdir(parents=True, exist_ok=True)
        held.append(run.lock())
        if run.exists():  # another process made it between our check and our lock
            raise UserError(f"results folder {run.path} already exists; use --resume {run.path} to finish it")
        from bench import environment

        facts = RouteTable({base_name(name): strategies.get(name).facts() for name in versions}).to_json()
        run.write_meta({"run_id": run.id, "status": "running", "config": cfg.to_json(),
                        "environment": environment.collect(versions), "strategies": facts,
                        "cells": [c.to_json() for c in cells], "started": time.time(), "shard": options.shard})
        return _measure(run, cfg, cells, options, baseline, resumed=False)
    finally:
        for lock in held:
            lock.release()


def resume(arg: str, options: RunOptions) -> int:
    """Finish an interrupted run (its folder or id): the cells it lacks, with its own config."""
    run = resolve_run(arg, options.out)
    held = [run.lock()]  # before reading the run: another process may be writing it
    try:
        meta = run.meta()
        if not isinstance(meta.get("config"), dict):
            raise UserError(f"{run.path / 'run.json'} holds no run config; it cannot be resumed")
        cfg = RunConfig.from_json(meta["config"])
        strategies.discover(cfg.plugins)
        options = RunOptions(**{**options.__dict__, "shard": meta.get("shard")})
        baseline = resolve(options.baseline, options.out, options.store) if options.baseline else None
        cells = _matrix(cfg, options.shard)
        _versions(cells)
        return _measure(run, cfg, cells, options, baseline, resumed=True)
    finally:
        for lock in held:
            lock.release()


def _matrix(cfg: RunConfig, shard: str | None) -> list[Cell]:
    from bench.runner import build_matrix, parse_shard, shard_cells

    cells = build_matrix(cfg)
    if not cells:
        raise UserError("the matrix is empty: no models with batch sizes, and no payload sweep")
    if shard:
        cells = shard_cells(cells, *parse_shard(shard))
        if not cells:
            raise UserError(f"shard {shard} of a {len(build_matrix(cfg))}-cell matrix is empty")
    return cells


def _versions(cells: list[Cell]) -> dict[str, Any]:
    return {name: strategies.get(name).runtime_versions() for name in dict.fromkeys(c.strategy for c in cells)}


def _measure(run: RunDir, cfg: RunConfig, cells: list[Cell], options: RunOptions, baseline: Any, resumed: bool) -> int:
    """The held run measured, then published; status kept in run.json through every way it can end."""
    from bench.runner import Runner, kill_current
    from plumbing.cache import default_cache_dir

    print(f"run {run.id}: {len(cells)} cells ({len(cfg.models)} models x {len(cfg.strategies)} strategies x "
          f"batch {cfg.batch_sizes} x threads {cfg.threads} x concurrency {cfg.concurrency}"
          + (f" + payload sweep {', '.join(format_size(s) for s in cfg.payload_sizes)}"
             if cfg.payload_sizes and "payload" in cfg.scenarios else "")
          + f"), scenarios {','.join(cfg.scenarios)}, profile {cfg.profile}", file=sys.stderr)
    print(f"results: {run.path}" + (f" (shard {options.shard}: {len(cells)} of the matrix's cells)" if options.shard else ""),
          file=sys.stderr)
    cache = default_cache_dir()
    print(f"artifact cache: {cache}" + (" (new; set $BENCH_CACHE_DIR to put it elsewhere)" if not cache.exists()
                                        else " ($BENCH_CACHE_DIR)" if os.environ.get("BENCH_CACHE_DIR") else ""),
          file=sys.stderr)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runner = Runner(cfg, run, cells=cells)
    t_run = time.perf_counter()
    try:
        outcome = runner.execute()
        try:
            _rematch(runner, run, cfg, options, outcome.ran)
        except Exception as e:  # the measured run stands; only the rematch is lost, and said so
            print(f"warning: the rematch of close leads failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                  "the decision uses the cells' own intervals", file=sys.stderr)
        run.write_meta({**run.meta(), "status": "complete", "finished": time.time()})
        run.write_summary()
        publish(run, options.report, options.history)
    except KeyboardInterrupt:
        kill_current()
        run.write_meta({**run.meta(), "status": "interrupted"})
        print(f"\ninterrupted; finished cells are kept. Resume with: python -m bench run --resume {run.path}",
              file=sys.stderr)
        return 130
    except OSError as e:  # the results folder cannot be written (full, read-only, over a size limit)
        if e.errno not in WRITE_ERRORS:
            raise
        kill_current()
        with contextlib.suppress(OSError):
            run.write_meta({**run.meta(), "status": "failed"})
        kept = len(run.load_cells(samples=False)) if run.cells_dir.is_dir() else 0
        print(f"error: cannot write {e.filename or run.path}: {e.strerror}; the run stopped, the {kept} cell(s) "
              f"measured before it are kept in {run.path} (make room, then: python -m bench run --resume {run.path})",
              file=sys.stderr)
        return 1
    except UserError:
        if not resumed and not any(run.cells_dir.glob("*.json")):
            shutil.rmtree(run.path, ignore_errors=True)  # nothing measured: leave nothing half-written
        else:
            run.write_meta({**run.meta(), "status": "failed"})
        raise
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.statuses.items()))
    print(f"{outcome.ran} cells run ({counts or 'none'}), {outcome.skipped_existing} kept from before", file=sys.stderr)
    wall = time.perf_counter() - t_run
    if outcome.ran and wall > 0:
        print(f"efficiency: {outcome.measuring_s / wall:.0%} of the run's {wall / 60:.1f} min went into measuring "
              f"({outcome.measuring_s / 60:.1f} min; the rest is process start-up, imports, builds, servers, "
              f"first calls and warm-up)", file=sys.stderr)
    status = judge(run, options.strict)
    if baseline is not None:
        status = max(status, gate(baseline, run, cfg, options))
    return status


def judge(run: RunDir, strict: bool) -> int:
    """1 if the run measured nothing validly, or (strict) any cell is not valid; 0 otherwise."""
    results = run.load_cells(samples=False)  # cells only: a cell's length buckets share its status
    status = 0
    if strict:
        # a route that declared it cannot take some shapes (an artifact its toolchain fixed) measured what it
        # can and said what it cannot: a finding, not a fault of the run
        for r in results:
            if r.status is Status.UNSUPPORTED:
                print(f"strict: {r.id} is unsupported (declared): {r.error[:200]}", file=sys.stderr)
        bad = [r for r in results if r.status not in (Status.OK, Status.UNSUPPORTED)]
        for r in bad:
            print(f"strict: {r.id} is {r.status}: {r.first_error_line}", file=sys.stderr)
        status = 1 if bad else 0
    if not any(r.ok for r in results):  # a CI job must not pass having measured nothing
        kinds = Counter(str(r.status) for r in results)
        print(f"error: no cell of run {run.id} was measured validly "
              f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'no cells'}); see {run.path}", file=sys.stderr)
        status = 1
    return status


def _rematch(runner: Any, run: RunDir, cfg: RunConfig, options: RunOptions, ran: int) -> None:
    """Close leads measured again side by side in warm workers (bench.rematch), before the report.
    A shard's cells are only part of the matrix, so shards leave it to the whole run."""
    from bench import rematch
    from bench.constraints import DEFAULT_TIE_WITHIN

    rounds = int(cfg.decision.get("rematch_rounds", rematch.DEFAULT_ROUNDS))
    if not rounds or options.shard or (not ran and (run.path / rematch.FILE).exists()):
        return
    groups = rematch.contests(run.load_cells(samples=False), RouteTable.from_json(run.meta().get("strategies")),
                              float(cfg.decision.get("tie_within", DEFAULT_TIE_WITHIN)))
    if groups:
        print(f"{len(groups)} close lead(s) to measure again side by side in warm workers "
              f"({rounds} alternating rounds each; [decision] rematch_rounds = 0 turns this off)", file=sys.stderr)
    rematch.write(run.path, rematch.run(runner, groups, rounds), rounds, rematch.TURN_S)


# -- the gate -------------------------------------------------------------------------------------------

def gate(baseline: Any, run: RunDir, cfg: RunConfig, options: RunOptions) -> int:
    """Compare with the baseline; re-measure the cells that regressed in fresh workers, up to
    CONFIRM_ATTEMPTS times, and fail only on those that regress every time.

    On a shared machine the same call can run 1.5x slower for seconds at a time (a neighbour on the
    host), longer than a cell's whole budget, so one slow period looks exactly like a regression in
    a single measurement, and a second can land in the next one. Contention only adds time: a real
    regression regresses in every attempt, a slow period rarely lasts through three."""
    from bench.compare import compare_runs
    from bench.runner import Runner

    def regressed(cmp: Any) -> set[str]:
        return {c.cell_id for c in cmp.regressions}

    print(f"\nagainst baseline {baseline.path}:")
    cmp = compare_runs(baseline, run, *options.gate.thresholds())
    first = flagged = sorted(regressed(cmp))
    for attempt in range(1, CONFIRM_ATTEMPTS + 1):
        if not flagged:
            break
        print(f"re-measuring {len(flagged)} cell(s) that regressed, to confirm (attempt {attempt} of {CONFIRM_ATTEMPTS}): "
              f"{', '.join(flagged)}", file=sys.stderr)
        # a length bucket (a part of a cell) is measured again with its whole cell
        parent = {part.id: part.part_of for r in run.load_cells(samples=False) for part in r.part_rows()}
        wanted = {parent.get(f, f) for f in flagged}
        cells = [Cell.from_json(c) for c in run.meta()["cells"] if c["id"] in wanted]
        for c in cells:  # the measurements that regressed are kept beside the run, not lost
            path = run.cell_path(c)
            path.replace(path.with_name(path.stem + (".unconfirmed" if attempt == 1 else f".unconfirmed-{attempt}") + ".json.bak"))
        Runner(cfg, run, cells=cells).execute()
        cmp = compare_runs(baseline, run, *options.gate.thresholds())
        flagged = sorted(regressed(cmp) & set(flagged))
    if first:
        run.write_summary()
        if options.history:
            record(run, options.history)
    status = report_comparison(cmp, run.path / "compare.json")  # the comparison of the run as it now stands
    cleared = len(first) - len(flagged)
    if cleared:
        print(f"({cleared} of the {len(first)} cell(s) flagged at first did not regress when measured again)")
    return status


def compare(base: Any, new: Any, gate_options: GateOptions, json_path: Path | None) -> int:
    """``bench compare``: 1 if the new run fails the gate against the base."""
    from bench.compare import compare_runs

    return report_comparison(compare_runs(base, new, *gate_options.thresholds()), json_path)


def report_comparison(cmp: Any, json_path: Path | None) -> int:
    """Print a comparison, write it as JSON if asked; 1 if it fails a gate."""
    from bench.compare import format_comparison
    from plumbing.files import atomic_write_json

    print(format_comparison(cmp))
    if json_path:
        atomic_write_json(json_path, cmp.to_json())
    if not cmp.changes and not cmp.broken:  # a gate that compared nothing must not pass
        raise UserError(f"runs {cmp.base} and {cmp.new} have no validly measured cell in common: nothing was compared")
    return 1 if cmp.failed else 0


# -- publishing ------------------------------------------------------------------------------------------

def publish(run: RunDir, report: bool, history: str | None) -> None:
    """A finished run: its summary table on the terminal, its report, then the history store."""
    print_summary(run)
    if report:
        from reports import render

        html, md = render(run)
        print(f"\nreport: {html.resolve()}\nmarkdown: {md.resolve()}")
    if history:  # last: a store that fails costs nothing already written
        record(run, history)


def print_summary(run: RunDir) -> None:
    from bench import scenarios
    from bench.runner import describe_outcome
    from reports.tables import allocator_flips, decisions, terminal_table

    cells = run.load_cells(samples=False)
    df = summary_frame(cells, run.id)
    standing = {n for n in scenarios.names() if scenarios.get(n).fixed_sections}
    main = df[df.scenario.isin(standing)].reset_index(drop=True)
    if len(main) or len(main) == len(df):
        print(terminal_table(main))
    others = [r for r in with_parts(cells) if r.cell.scenario not in standing]
    if others:
        w = max(len(r.id) for r in others)
        for r in sorted(others, key=lambda r: (r.cell.scenario, r.cell.model, r.cell.strategy)):
            print(f"{r.id:<{w}}  {describe_outcome(r)}")
    for flip in allocator_flips(decisions(main)):
        print("allocator-dependent ranking: " + flip.replace("**", ""))


def record(run: RunDir, url: str) -> None:
    """Record a finished run in the history store. A store that cannot be opened or written is a
    warning naming it: the run's results, summary and report are already written and stay."""
    from bench.history import History, _redact

    where = url if not url.startswith("postgres") else _redact(url)
    try:
        with History.open(url) as h:
            n = h.record(run)
    except UserError as e:
        print(f"warning: the run was not recorded in the history store: {e} (results kept in {run.path})", file=sys.stderr)
        return
    except Exception as e:  # sqlite3/psycopg/OSError: a locked, broken or unwritable store
        text = " ".join(str(e).split())[:300] or type(e).__name__
        print(f"warning: the run was not recorded in the history store {where}: {type(e).__name__}: {text} "
              f"(results kept in {run.path})", file=sys.stderr)
        return
    print(f"history: recorded {run.id} ({n} cells) in {where if not url.startswith('postgres') else 'PostgreSQL'}",
          file=sys.stderr)
