"""Command line: ``python -m bench run | report | list | compare | merge | export | history | trend``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import strategies
from bench.config import (
    DEFAULT_SCENARIOS,
    PROFILES,
    build_config,
    format_size,
    load_config_file,
    make_custom_model,
)
from bench.errors import UserError
from bench.results import WRITE_ERRORS, RunDir, RunLock, check_run_id, resolve_run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        command = " ".join(self.prog.split()[1:])  # prog is "bench" or "bench run"
        raise UserError(f"{message} (see `python -m bench{' ' + command if command else ''} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Benchmark PyTorch model integration strategies.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a benchmark matrix and write a results folder and report")
    r.add_argument("--config", type=Path, help="TOML config file (see bench/config.py)")
    r.add_argument("--profile", choices=None, help=f"base settings: {', '.join(PROFILES)} (default: default)")
    r.add_argument("--models", help="comma-separated model names")
    r.add_argument("--strategies", help="comma-separated strategy names")
    r.add_argument("--batch-sizes", help="comma-separated, e.g. 1,8,64")
    r.add_argument("--threads", help="intra-op threads for every runtime, comma-separated")
    r.add_argument("--concurrency", help="concurrent callers, comma-separated")
    r.add_argument("--payload-sizes", help="identity sweep sizes, e.g. 1KiB,1MiB,64MiB, or 'none'")
    r.add_argument("--seed", type=int)
    r.add_argument("--cpus", help="pin each cell's worker (and the servers it starts) to these CPUs, e.g. 1 or 2-3; "
                                  "steadier numbers on a busy machine, but a client and its server then share them")
    r.add_argument("--malloc", metavar="POLICIES",
                   help="C allocator of every process a cell uses, comma-separated to compare several: default "
                        "(glibc as shipped, what an application gets), steady (glibc keeping freed memory), "
                        "jemalloc, tcmalloc (preloaded from the OS packages)")
    r.add_argument("--plugin", action="append", default=None, help="module that registers extra strategies or scenarios")
    from bench import scenarios

    sc = r.add_argument_group("scenarios (what is measured)")
    sc.add_argument("--scenarios", help=f"comma-separated, in run order, of {', '.join(scenarios.names())} "
                                        "(default: the profile's; `bench list` says what each measures)")
    owners: dict[str, list[str]] = {}
    helps: dict[str, str] = {}
    for name in scenarios.names():
        for opt in scenarios.get(name).options.values():
            if opt.flag:
                owners.setdefault(opt.flag, []).append(name)
                helps.setdefault(opt.flag, opt.help)
    for flag, names in owners.items():
        sc.add_argument(flag, dest=_scenario_dest(flag), metavar=flag.lstrip("-").replace("-", "_").upper(), help=f"{', '.join(names)}: {helps[flag]}")
    g = r.add_argument_group("bring your own model")
    g.add_argument("--model-factory", help="package.module:callable returning a torch.nn.Module")
    g.add_argument("--model-inputs", help="input spec, e.g. 'x:float32[batch,16]=-1..1; ids:int64[batch,8]=0..100'")
    g.add_argument("--model-name", default="custom")
    g.add_argument("--model-outputs", help="comma-separated output names")
    g.add_argument("--atol", type=float, default=1e-4)
    g.add_argument("--rtol", type=float, default=1e-3)
    _decision_flags(r, measuring=True)
    s = r.add_argument_group("sampling budget (seconds)")
    for flag, key in (("--warmup", "warmup_s"), ("--min-time", "min_time_s"), ("--max-time", "max_time_s"),
                      ("--target-ci", "target_rel_ci"), ("--concurrency-time", "concurrency_s")):
        s.add_argument(flag, type=float, dest=key)
    strategies.discover()
    flags = {f.flag: f for name in strategies.names() for f in strategies.get(name).cli_flags}
    if flags:
        g = r.add_argument_group("strategy settings")
        for f in flags.values():
            g.add_argument(f.flag, dest=_flag_dest(f.flag), metavar=f.metavar, help=f.help)
    r.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    r.add_argument("--run-id", help="name of the results folder (default: timestamp)")
    r.add_argument("--resume", help="finish an interrupted run: its folder or id")
    r.add_argument("--strict", action="store_true", help="exit 1 unless every cell is valid (CI)")
    r.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown report")
    r.add_argument("--history", help="history store to record the run in: an SQLite file or a postgresql:// URL "
                                     "(default: $BENCH_HISTORY, else <out>/history.sqlite)")
    r.add_argument("--no-history", action="store_true", help="do not record this run in the history store")
    r.add_argument("--shard", help="run only slice i of n of the matrix (e.g. 2/4), for a CI matrix of runners; "
                                   "combine the results with `bench merge`")
    r.add_argument("--baseline", help="after the run, compare with this run (folder, id or branch:NAME) and exit 1 "
                                      "on a significant regression past --threshold (a CI gate)")
    r.add_argument("--threshold", type=_fraction, default=None, help="regression threshold, e.g. 0.1 or 10%% (default 10%%)")
    r.add_argument("--threshold-concurrent", type=_fraction, default=None,
                   help="the gate's threshold for cells with several callers (default 30%%)")
    r.add_argument("--partial-baseline", action="store_true",
                   help="the gate expects the baseline to lack some of this run's cells (otherwise they fail it)")

    cmp = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 on a significant regression")
    cmp.add_argument("base", help="base run: results folder, run id, branch:NAME or latest")
    cmp.add_argument("new", help="new run: results folder, run id, branch:NAME or latest")
    cmp.add_argument("--threshold", type=_fraction, default=None, help="relative change that counts (default 10%%)")
    cmp.add_argument("--threshold-concurrent", type=_fraction, default=None,
                     help="threshold for cells with several callers, which swing more between runs (default 30%%)")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level of the Mann-Whitney U test")
    cmp.add_argument("--partial-baseline", action="store_true",
                     help="cells the new run measured and the base lacks are expected (otherwise they fail the comparison)")
    cmp.add_argument("--json", type=Path, help="also write the comparison as JSON to this file")
    cmp.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    cmp.add_argument("--history", help="history store to look run ids up in (default: $BENCH_HISTORY, else <out>/history.sqlite)")

    hist = sub.add_parser("history", help="list the runs recorded in the history store")
    hist.add_argument("--history", help="SQLite file or postgresql:// URL (default: $BENCH_HISTORY, else <out>/history.sqlite)")
    hist.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    hist.add_argument("--branch", help="only runs made on this git branch")
    hist.add_argument("--record", nargs="+", metavar="RUN", help="record these results folders in the store first")

    tr = sub.add_parser("trend", help="each cell's median over the recorded runs, regressions marked (HTML)")
    tr.add_argument("--history", help="SQLite file or postgresql:// URL (default: $BENCH_HISTORY, else <out>/history.sqlite)")
    tr.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    tr.add_argument("--branch", help="only runs made on this git branch")
    tr.add_argument("--threshold", type=_fraction, default=None, help="regression threshold (default 10%%)")
    tr.add_argument("--file", type=Path, help="where to write the page (default: <out>/trend.html)")

    rep = sub.add_parser("report", help="render the HTML and Markdown report of a run")
    rep.add_argument("run", nargs="?", help="results folder or run id (default: the latest run)")
    rep.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    _decision_flags(rep)

    mrg = sub.add_parser("merge", help="combine the shards of one matrix into one run folder and report")
    mrg.add_argument("dest", type=Path, help="new results folder for the merged run")
    mrg.add_argument("shards", nargs="+", help="shard run folders (or ids under --out)")
    mrg.add_argument("--out", type=Path, default=Path("results"), help="results root for run ids (default: ./results)")
    mrg.add_argument("--no-report", action="store_true", help="skip the HTML/Markdown report")
    mrg.add_argument("--history", help="history store to record the merged run in (default: $BENCH_HISTORY, else <out>/history.sqlite)")
    mrg.add_argument("--no-history", action="store_true", help="do not record the merged run")

    exp = sub.add_parser("export", help="write a run as pytest-benchmark or github-action-benchmark JSON")
    exp.add_argument("run", nargs="?", help="results folder or run id (default: the latest run)")
    exp.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
    exp.add_argument("--pytest-benchmark", type=Path, metavar="FILE", help="pytest-benchmark JSON (pytest-benchmark compare FILE)")
    exp.add_argument("--github-action", type=Path, metavar="FILE", help="github-action-benchmark customSmallerIsBetter JSON")

    lst = sub.add_parser("list", help="show strategies (with availability) and models")
    lst.add_argument("--plugin", action="append", default=None)
    return p


def _decision_flags(p: argparse.ArgumentParser, measuring: bool = False) -> None:
    d = p.add_argument_group("decision (the reviewer's constraints; [decision] in the config)")
    d.add_argument("--caller", help="the application's language: python, csharp, cpp or any (default: a block for each)")
    d.add_argument("--python-at-deployment", metavar="yes|no", help="no: routes that need Python where the application runs are out")
    d.add_argument("--memory-budget", metavar="SIZE", help="most memory a route may add, e.g. 500MB")
    d.add_argument("--p99-budget", metavar="TIME", help="p99 latency budget, e.g. 10ms")
    d.add_argument("--tie-within", metavar="FRACTION", help="leads under this are ties (default 5%%)")
    d.add_argument("--required-rate", metavar="RPS", help="requests/s a route must hold within the slo scenario's p99 "
                                                          "budget (routes below it, or not measured by slo, are out)")
    if measuring:
        d.add_argument("--rematch-rounds", metavar="N", help="close leads are measured again side by side in this many "
                                                               "alternating rounds after the matrix (default 10; 0: off)")


def _decision_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("caller", args.caller), ("python_at_deployment", args.python_at_deployment),
                              ("memory_budget_mb", args.memory_budget), ("p99_budget_ms", args.p99_budget),
                              ("tie_within", args.tie_within), ("required_rate_rps", args.required_rate),
                              ("rematch_rounds", getattr(args, "rematch_rounds", None))) if v is not None}


def _fraction(text: str) -> float:
    """'0.1' or '10%' -> 0.1"""
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or percentage: {text!r}") from None
    if not 0 < v < 10:
        raise argparse.ArgumentTypeError(f"threshold must be above 0 (e.g. 0.1 or 10%), got {text!r}")
    return v


def _flag_dest(flag: str) -> str:
    return "strategy_flag_" + flag.lstrip("-").replace("-", "_")


# -- list -------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from fixtures.builtin import BUILTIN_MODELS

    strategies.discover(args.plugin or [])
    print("Strategies:")
    for name in strategies.names():
        s = strategies.get(name)
        a = s.available()
        state = "available" if a.ok else f"UNAVAILABLE: {a.reason}"
        print(f"  {name:<16} {state}")
        print(f"  {'':<16} {s.summary}")
        langs = ", ".join({"python": "Python", "csharp": "C#", "cpp": "C++", "any": "any (a network service)"}.get(x, x)
                          for x in s.languages)
        print(f"  {'':<16} callers: {langs}; Python at deployment: {'yes' if s.python_at_deployment else 'no'}; "
              f"ships: {s.artifact}" + (f" (exporter: {s.exporter})" if s.exporter else "")
              + ("" if s.concurrent_calls else "; one caller at a time"))
        if s.variants:
            default = s.default_variant()
            print(f"  {'':<16} {s.variant_key}" + (f" {default} by default" if default else "") + "; side by side: " + ", ".join(
                f"{name}@{v}" + (f" [unavailable: {s.variant_reason(v)}]" if s.variant_reason(v) else "") for v in s.variants))
    for name, err in strategies.broken().items():
        print(f"  {name:<16} BROKEN: {err}")
    print("\nModels:")
    for m in BUILTIN_MODELS.values():
        ins = ", ".join(t.describe() for t in m.inputs) + "".join(
            f"; {k}={lo}..{hi} ({nom} where one shape is measured)" for k, (lo, hi, nom) in m.dims.items())
        print(f"  {m.name:<12} {m.description}")
        print(f"  {'':<12} inputs {ins} -> {', '.join(m.outputs)}")
    print("  (bring your own: --model-factory pkg.module:fn --model-inputs 'x:float32[batch,16]' (a named dimension: "
          "'ids:int64[batch,seq]; seq=8..512'), or [[model]] in a config)")
    print("\nProfiles:")
    for name, p in PROFILES.items():
        print(f"  {name:<8} models={','.join(p['models'])} batch={p['batch_sizes']} threads={p['threads']} "
              f"concurrency={p['concurrency']} payload={','.join(p['payload_sizes']) or '-'} max_time={p['sampling'].max_time_s}s "
              f"scenarios={','.join(p.get('scenarios', DEFAULT_SCENARIOS))}")
    from bench import scenarios

    print("\nScenarios (--scenarios):")
    for name in scenarios.names():
        print(f"  {name:<12} {scenarios.get(name).summary}")
    return 0


# -- run --------------------------------------------------------------------------------------------
def _scenario_dest(flag: str) -> str:
    return "scenario__" + flag.lstrip("-").replace("-", "_")


MATRIX_FLAGS = ("scenarios", "config", "profile", "models", "strategies", "batch_sizes", "threads", "concurrency",
                "payload_sizes", "seed", "model_factory", "plugin", "cpus", "malloc", "shard")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bench import scenarios
    from fixtures.specs import parse_input_spec, split_dims

    o: dict[str, Any] = {
        "scenarios": args.scenarios,
        "scenario_flags": {opt.flag: getattr(args, _scenario_dest(opt.flag))
                           for name in scenarios.names() for opt in scenarios.get(name).options.values()
                           if opt.flag and getattr(args, _scenario_dest(opt.flag), None) is not None},
        "profile": args.profile, "models": args.models, "strategies": args.strategies,
        "batch_sizes": args.batch_sizes, "threads": args.threads, "concurrency": args.concurrency,
        "payload_sizes": args.payload_sizes, "seed": args.seed, "cpus": args.cpus,
        "malloc": args.malloc, "decision": _decision_overrides(args),
        "sampling": {k: getattr(args, k) for k in ("warmup_s", "min_time_s", "max_time_s", "target_rel_ci", "concurrency_s")
                     if getattr(args, k) is not None},
    }
    settings: dict[str, dict[str, Any]] = {}
    for name in strategies.names():
        for f in strategies.get(name).cli_flags:
            value = getattr(args, _flag_dest(f.flag), None)
            if value is not None:
                settings.setdefault(name, {})[f.key] = value
    o["strategy_settings"] = settings
    if args.model_factory or args.model_inputs:
        if not (args.model_factory and args.model_inputs):
            raise UserError("--model-factory and --model-inputs go together")
        outputs = [x.strip() for x in args.model_outputs.split(",")] if args.model_outputs else []
        tensors, dims = split_dims(args.model_inputs)
        o["custom_models"] = [make_custom_model(args.model_name, args.model_factory, parse_input_spec(tensors),
                                                outputs, args.atol, args.rtol, dims=dims)]
    return o


def _new_run_dir(root: Path, run_id: str | None) -> RunDir:
    base = check_run_id(run_id) if run_id is not None else datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_id and (root / run_id).exists():
        raise UserError(f"results folder {root / run_id} already exists; use --resume {root / run_id} to finish it")
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return RunDir(path)


def cmd_run(args: argparse.Namespace) -> int:
    held: list[RunLock] = []
    try:
        return _run(args, held)
    finally:
        for lock in held:
            lock.release()


def _run(args: argparse.Namespace, held: list[RunLock]) -> int:
    """``bench run``, holding the run folder's lock (in ``held``) until cmd_run returns."""
    from bench import environment
    from bench.config import RunConfig
    from bench.runner import Runner, build_matrix, kill_current, parse_shard, shard_cells

    if args.resume:
        given = [f for f in MATRIX_FLAGS if getattr(args, f, None) not in (None, [], False)]
        given += [d.removeprefix("scenario__") for d in vars(args) if d.startswith("scenario__") and getattr(args, d) is not None]
        if given:
            raise UserError(f"--resume reuses the run's own matrix; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
        run = resolve_run(args.resume, args.out)
        held.append(run.lock())  # before reading the run: another process may be writing it
        meta = run.meta()
        if not isinstance(meta.get("config"), dict):
            raise UserError(f"{run.path / 'run.json'} holds no run config; it cannot be resumed")
        cfg = RunConfig.from_json(meta["config"])
        args.shard = meta.get("shard")
        strategies.discover(cfg.plugins)
    else:
        file_data = load_config_file(args.config) if args.config else {}
        plugins = list(file_data.get("plugins", [])) + list(args.plugin or [])
        strategies.discover(plugins)
        overrides = _overrides(args)
        if args.plugin:
            overrides["plugins"] = plugins
        cfg = build_config(file_data, overrides, strategies.names())
        run = _new_run_dir(args.out, args.run_id)

    baseline = _resolve(args.baseline, args) if args.baseline else None
    cells = build_matrix(cfg)
    if not cells:
        raise UserError("the matrix is empty: no models with batch sizes, and no payload sweep")
    if args.shard:
        cells = shard_cells(cells, *parse_shard(args.shard))
        if not cells:
            raise UserError(f"shard {args.shard} of a {len(build_matrix(cfg))}-cell matrix is empty")
    versions = {name: strategies.get(name).runtime_versions() for name in dict.fromkeys(c.strategy for c in cells)}
    if not args.resume:
        run.path.mkdir(parents=True, exist_ok=True)
        held.append(run.lock())
        if run.exists():  # another process made it between our check and our lock
            raise UserError(f"results folder {run.path} already exists; use --resume {run.path} to finish it")
        facts = {name.partition("@")[0]: strategies.get(name).facts() for name in versions}
        meta = {"run_id": run.id, "status": "running", "config": cfg.to_json(), "environment": environment.collect(versions),
                "strategies": facts,
                "cells": [c.to_json() for c in cells], "started": time.time(), "shard": args.shard}
        run.write_meta(meta)
    print(f"run {run.id}: {len(cells)} cells ({len(cfg.models)} models x {len(cfg.strategies)} strategies x "
          f"batch {cfg.batch_sizes} x threads {cfg.threads} x concurrency {cfg.concurrency}"
          + (f" + payload sweep {', '.join(format_size(s) for s in cfg.payload_sizes)}"
             if cfg.payload_sizes and "payload" in cfg.scenarios else "")
          + f"), scenarios {','.join(cfg.scenarios)}, profile {cfg.profile}", file=sys.stderr)
    print(f"results: {run.path}" + (f" (shard {args.shard}: {len(cells)} of the matrix's cells)" if args.shard else ""),
          file=sys.stderr)
    from bench.cache import default_cache_dir

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
            _rematch(runner, run, cfg, args, outcome.ran)
        except Exception as e:  # the measured run stands; only the rematch is lost, and said so
            print(f"warning: the rematch of close leads failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                  "the decision uses the cells' own intervals", file=sys.stderr)
        run.write_meta({**run.meta(), "status": "complete", "finished": time.time()})
        run.write_summary()
        _publish(run, args)
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
        if not args.resume and not any(run.cells_dir.glob("*.json")):
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
    status = 0
    results = run.load_cells(samples=False)
    results = [r for r in results if not r.get("part_of")]  # a cell's length buckets share its status
    if args.strict:
        # a route that declared it cannot take some shapes (an artifact its toolchain fixed) measured what it
        # can and said what it cannot: a finding, not a fault of the run
        for r in results:
            if r["status"] == "unsupported":
                print(f"strict: {r['cell']['id']} is unsupported (declared): {(r.get('error') or '')[:200]}", file=sys.stderr)
        bad = [r for r in results if r["status"] not in ("ok", "unsupported")]
        for r in bad:
            print(f"strict: {r['cell']['id']} is {r['status']}: {(r.get('error') or '').splitlines()[0] if r.get('error') else ''}",
                  file=sys.stderr)
        status = 1 if bad else 0
    if not any(r["status"] == "ok" for r in results):  # a CI job must not pass having measured nothing
        kinds = {}
        for r in results:
            kinds[r["status"]] = kinds.get(r["status"], 0) + 1
        print(f"error: no cell of run {run.id} was measured validly "
              f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'no cells'}); see {run.path}", file=sys.stderr)
        status = 1
    if baseline is not None:
        status = max(status, _gate(baseline, run, cfg, args))
    return status


CONFIRM_ATTEMPTS = 3


def _rematch(runner: Any, run: RunDir, cfg: Any, args: argparse.Namespace, ran: int) -> None:
    """Close leads measured again side by side in warm workers (bench.rematch), before the report.
    A shard's cells are only part of the matrix, so shards leave it to the whole run."""
    from bench import rematch

    rounds = int(cfg.decision.get("rematch_rounds", rematch.DEFAULT_ROUNDS))
    if not rounds or args.shard or (not ran and (run.path / rematch.FILE).exists()):
        return
    from bench.constraints import DEFAULT_TIE_WITHIN

    groups = rematch.contests(run.load_cells(samples=False), run.meta().get("strategies") or {},
                              float(cfg.decision.get("tie_within", DEFAULT_TIE_WITHIN)))
    if groups:
        print(f"{len(groups)} close lead(s) to measure again side by side in warm workers "
              f"({rounds} alternating rounds each; [decision] rematch_rounds = 0 turns this off)", file=sys.stderr)
    rematch.write(run.path, rematch.run(runner, groups, rounds), rounds, rematch.TURN_S)


def _gate(baseline: Any, run: RunDir, cfg: Any, args: argparse.Namespace) -> int:
    """Compare with the baseline; re-measure the cells that regressed in fresh workers, up to
    CONFIRM_ATTEMPTS times, and fail only on those that regress every time.

    On a shared machine the same call can run 1.5x slower for seconds at a time (a neighbour on the
    host), longer than a cell's whole budget, so one slow period looks exactly like a regression in
    a single measurement, and a second can land in the next one. Contention only adds time: a real
    regression regresses in every attempt, a slow period rarely lasts through three."""
    from bench.compare import compare_runs
    from bench.results import Cell
    from bench.runner import Runner

    def regressed(cmp: Any) -> set[str]:
        return {c.cell_id for c in cmp.regressions}

    print(f"\nagainst baseline {baseline.path}:")
    cmp = compare_runs(baseline, run, *_thresholds(args))
    first = flagged = sorted(regressed(cmp))
    for attempt in range(1, CONFIRM_ATTEMPTS + 1):
        if not flagged:
            break
        print(f"re-measuring {len(flagged)} cell(s) that regressed, to confirm (attempt {attempt} of {CONFIRM_ATTEMPTS}): "
              f"{', '.join(flagged)}", file=sys.stderr)
        # a length bucket (a part of a cell) is measured again with its whole cell
        parent = {r["cell"]["id"]: r.get("part_of") or r["cell"]["id"] for r in run.load_cells(samples=False)}
        wanted = {parent.get(f, f) for f in flagged}
        cells = [Cell.from_json(c) for c in run.meta()["cells"] if c["id"] in wanted]
        for c in cells:  # the measurements that regressed are kept beside the run, not lost
            path = run.cell_path(c)
            path.replace(path.with_name(path.stem + (".unconfirmed" if attempt == 1 else f".unconfirmed-{attempt}") + ".json.bak"))
        Runner(cfg, run, cells=cells).execute()
        cmp = compare_runs(baseline, run, *_thresholds(args))
        flagged = sorted(regressed(cmp) & set(flagged))
    if first:
        run.write_summary()
        if not args.no_history:
            _record(run, args)
    status = _report(cmp, run.path / "compare.json")  # the comparison of the run as it now stands
    cleared = len(first) - len(flagged)
    if cleared:
        print(f"({cleared} of the {len(first)} cell(s) flagged at first did not regress when measured again)")
    return status


def _thresholds(args: argparse.Namespace) -> tuple[float, float, float, bool]:
    """The gate's (threshold, alpha, threshold for several callers, whether a partial baseline is expected)."""
    from bench.compare import DEFAULT_CONCURRENT_THRESHOLD, DEFAULT_THRESHOLD

    return ((DEFAULT_THRESHOLD if args.threshold is None else args.threshold), 0.05,
            DEFAULT_CONCURRENT_THRESHOLD if args.threshold_concurrent is None else args.threshold_concurrent,
            bool(getattr(args, "partial_baseline", False)))


def _publish(run: RunDir, args: argparse.Namespace) -> None:
    """A finished run: into the history store, its summary table, its report."""
    print_summary(run)
    if not args.no_report:
        from reports import render

        html, md = render(run)
        print(f"\nreport: {html.resolve()}\nmarkdown: {md.resolve()}")
    if not args.no_history:  # last: a store that fails costs nothing already written
        _record(run, args)


def print_summary(run: RunDir) -> None:
    from bench import scenarios
    from bench.runner import describe_outcome
    from reports.tables import allocator_flips, decisions, terminal_table

    df = run.frame()
    standing = {n for n in scenarios.names() if scenarios.get(n).fixed_sections}
    main = df[df.scenario.isin(standing)].reset_index(drop=True)
    if len(main) or len(main) == len(df):
        print(terminal_table(main))
    others = [r for r in run.load_cells(samples=False) if r["cell"]["scenario"] not in standing]
    if others:
        w = max(len(r["cell"]["id"]) for r in others)
        for r in sorted(others, key=lambda r: (r["cell"]["scenario"], r["cell"]["model"], r["cell"]["strategy"])):
            print(f"{r['cell']['id']:<{w}}  {describe_outcome(r)}")
    for flip in allocator_flips(decisions(main)):
        print("allocator-dependent ranking: " + flip.replace("**", ""))


def _history_url(args: argparse.Namespace) -> str:
    from bench.history import default_url

    return getattr(args, "history", None) or os.environ.get("BENCH_HISTORY") or default_url(args.out)


def _resolve(arg: str | None, args: argparse.Namespace):
    """A results folder, a run id under --out, latest, or else a run id / branch:NAME in the history store."""
    try:
        return resolve_run(arg, args.out)
    except UserError as folder_error:
        if not arg or arg == "latest":
            raise
        from bench.history import History

        url = _history_url(args)
        if not url.startswith("postgres") and not Path(url).exists():
            raise
        h = History.open(url)
        found = h.latest(arg.split(":", 1)[1]) if arg.startswith("branch:") else h.get(arg)
        if found is None:
            raise UserError(f"{folder_error}; nor is {arg!r} in the history store {url}") from None
        return found


def _record(run: RunDir, args: argparse.Namespace) -> None:
    """Record a finished run in the history store. A store that cannot be opened or written is a
    warning naming it: the run's results, summary and report are already written and stay."""
    from bench.history import History, _redact

    url = _history_url(args)
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


def _compare(base: RunDir, new: RunDir, threshold: float | None, alpha: float, json_path: Path | None,
             concurrent_threshold: float | None = None, partial_baseline: bool = False) -> int:
    from bench.compare import DEFAULT_CONCURRENT_THRESHOLD, DEFAULT_THRESHOLD, compare_runs

    return _report(compare_runs(base, new, DEFAULT_THRESHOLD if threshold is None else threshold, alpha,
                                DEFAULT_CONCURRENT_THRESHOLD if concurrent_threshold is None else concurrent_threshold,
                                partial_baseline), json_path)


def _report(cmp: Any, json_path: Path | None) -> int:
    """Print a comparison, write it as JSON if asked; 1 if it fails a gate."""
    from bench.compare import format_comparison
    from bench.results import atomic_write_json

    print(format_comparison(cmp))
    if json_path:
        atomic_write_json(json_path, cmp.to_json())
    if not cmp.changes and not cmp.broken:  # a gate that compared nothing must not pass
        raise UserError(f"runs {cmp.base} and {cmp.new} have no validly measured cell in common: nothing was compared")
    return 1 if cmp.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    return _compare(_resolve(args.base, args), _resolve(args.new, args), args.threshold, args.alpha, args.json,
                    args.threshold_concurrent, args.partial_baseline)


def cmd_history(args: argparse.Namespace) -> int:
    from bench.history import History

    with History.open(_history_url(args)) as h:
        for run in args.record or []:
            rd = resolve_run(run, args.out)
            print(f"recorded {rd.id}: {h.record(rd)} cells")
        rows = h.runs(args.branch)
        print(f"{len(rows)} runs in {h.url if not h.postgres else 'PostgreSQL'}" + (f" on branch {args.branch}" if args.branch else ""))
        for r in rows:
            when = datetime.fromtimestamp(r["started"]).strftime("%Y-%m-%d %H:%M") if r["started"] else "?"
            print(f"  {r['run_id']:<28} {when}  {r['status']:<9} {r['branch'] or '-':<16} {(r['commit'] or '-')[:10]}  {r['machine']}")
    return 0


def cmd_trend(args: argparse.Namespace) -> int:
    from bench.compare import DEFAULT_THRESHOLD
    from bench.history import History
    from reports.trend import render_trend

    with History.open(_history_url(args)) as h:
        runs = [h.get(r["run_id"]) for r in h.runs(args.branch) if r["status"] == "complete"]
        if len(runs) < 2:
            raise UserError(f"the history store {h.url if not h.postgres else 'PostgreSQL'} has {len(runs)} complete "
                            "runs" + (f" on branch {args.branch}" if args.branch else "") + "; a trend needs two")
        path = args.file or (args.out / "trend.html")
        flagged = render_trend(runs, path, DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    print(f"trend over {len(runs)} runs: {path.resolve()} ({flagged} regressions marked)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from bench.merge import merge_runs

    shards = [resolve_run(s, args.out) for s in args.shards]
    dest = RunDir(args.dest)
    merged, total, warnings = merge_runs(shards, dest)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"merged {len(shards)} shards into {dest.path}: {merged} of the matrix's {total} cells", file=sys.stderr)
    _publish(dest, args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import to_github_action, to_pytest_benchmark
    from bench.results import atomic_write_json

    if not (args.pytest_benchmark or args.github_action):
        raise UserError("export needs --pytest-benchmark FILE and/or --github-action FILE")
    run = _resolve(args.run, args)
    if args.pytest_benchmark:
        atomic_write_json(args.pytest_benchmark, to_pytest_benchmark(run))
        print(f"pytest-benchmark: {args.pytest_benchmark}")
    if args.github_action:
        atomic_write_json(args.github_action, to_github_action(run))
        print(f"github-action-benchmark: {args.github_action}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.constraints import check_constraints
    from reports import render

    run = resolve_run(args.run, args.out)
    flags = _decision_overrides(args)  # over the run's own [decision], as bench run puts flags over the file
    decision = check_constraints({**(run.meta().get("config", {}).get("decision") or {}), **flags}) if flags else None
    html, md = render(run, decision)
    print(f"report: {html.resolve()}\nmarkdown: {md.resolve()}")
    if getattr(run, "unreadable", None):
        print(f"warning: {len(run.unreadable)} cell file(s) could not be read and are left out of the report: "
              f"{', '.join(run.unreadable[:6])} (bench run --resume {run.path} measures them again)", file=sys.stderr)
    return 0


def _plugins_in(argv: list[str]) -> list[str]:
    """The --plugin modules on the command line, imported before the parser is built so that the
    flags of the strategies and scenarios they register are known."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugin="):
            out.append(a.split("=", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        plugins = _plugins_in(sys.argv[1:] if argv is None else argv)
        if plugins:
            from bench import scenarios

            strategies.discover(plugins)
            scenarios.discover(plugins)
        args, extra = _parser().parse_known_args(argv)
        if extra:  # named against the subcommand they were given to, whose --help lists its flags
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see `python -m bench {args.command} --help`)")
        return {"run": cmd_run, "report": cmd_report, "list": cmd_list, "compare": cmd_compare,
                "merge": cmd_merge, "export": cmd_export, "history": cmd_history, "trend": cmd_trend}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
