"""Command line: ``python -m bench run | report | list | compare | merge | export | history | trend``.

Each subcommand parses its flags, builds a config and calls one function of the run's lifecycle
(``bench.lifecycle``: start, resume, compare, publish) or of the module that does the work (merge,
export, history, the report); locking, status, signals, the rematch and recording live there.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

import strategies
from bench import arguments, lifecycle
from bench.config import (
    DEFAULT_SCENARIOS,
    PROFILES,
    build_config,
    load_config_file,
)
from bench.results import RunDir, resolve_run
from plumbing.errors import UserError


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
def _options(args: argparse.Namespace) -> lifecycle.RunOptions:
    return lifecycle.RunOptions(
        out=args.out, run_id=args.run_id, shard=args.shard, strict=args.strict, report=not args.no_report,
        history=None if args.no_history else lifecycle.history_url(args.history, args.out), store=args.history,
        baseline=args.baseline,
        gate=lifecycle.GateOptions(args.threshold, args.threshold_concurrent, args.partial_baseline))


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [f for f in arguments.MATRIX_FLAGS if getattr(args, f, None) not in (None, [], False)]
        given += [d.removeprefix("scenario__") for d in vars(args) if d.startswith("scenario__") and getattr(args, d) is not None]
        if given:
            raise UserError(f"--resume reuses the run's own matrix; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
        return lifecycle.resume(args.resume, _options(args))
    file_data = load_config_file(args.config) if args.config else {}
    plugins = list(file_data.get("plugins", [])) + list(args.plugin or [])
    strategies.discover(plugins)
    overrides = arguments.config_overrides(args)
    if args.plugin:
        overrides["plugins"] = plugins
    return lifecycle.start(build_config(file_data, overrides, strategies.names()), _options(args))


def _resolve(arg: str | None, args: argparse.Namespace):
    return lifecycle.resolve(arg, args.out, getattr(args, "history", None))


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    gate = lifecycle.GateOptions(args.threshold, args.threshold_concurrent, args.partial_baseline, args.alpha)
    return lifecycle.compare(_resolve(args.base, args), _resolve(args.new, args), gate, args.json)


def cmd_history(args: argparse.Namespace) -> int:
    from bench.history import History

    with History.open(lifecycle.history_url(args.history, args.out)) as h:
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

    with History.open(lifecycle.history_url(args.history, args.out)) as h:
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
    lifecycle.publish(dest, not args.no_report, None if args.no_history else lifecycle.history_url(args.history, args.out))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import to_github_action, to_pytest_benchmark
    from plumbing.files import atomic_write_json

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
    flags = arguments.decision_overrides(args)  # over the run's own [decision], as bench run puts flags over the file
    decision = check_constraints({**(run.meta().get("config", {}).get("decision") or {}), **flags}) if flags else None
    html, md = render(run, decision)
    print(f"report: {html.resolve()}\nmarkdown: {md.resolve()}")
    if getattr(run, "unreadable", None):
        print(f"warning: {len(run.unreadable)} cell file(s) could not be read and are left out of the report: "
              f"{', '.join(run.unreadable[:6])} (bench run --resume {run.path} measures them again)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        plugins = arguments.plugins_in(sys.argv[1:] if argv is None else argv)
        if plugins:
            from bench import scenarios

            strategies.discover(plugins)
            scenarios.discover(plugins)
        args, extra = arguments.parser().parse_known_args(argv)
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
