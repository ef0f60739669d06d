"""What the command line accepts: the parser of every subcommand, and the flags turned into the
config's overrides (``bench.config.build_config``). ``bench.cli`` runs the commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

import strategies
from bench.config import PROFILES
from fixtures.custom import make_custom_model
from plumbing.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        command = " ".join(self.prog.split()[1:])  # prog is "bench" or "bench run"
        raise UserError(f"{message} (see `python -m bench{' ' + command if command else ''} --help`)")


def parser() -> argparse.ArgumentParser:
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
    s = r.add_argument_group("sampling budget (seconds)", "for the cells measured alone: every scenario but latency's "
                             "one-caller cells, which are measured in interleaved rounds (below) unless --rounds 0")
    for flag, key in (("--warmup", "warmup_s"), ("--min-time", "min_time_s"), ("--max-time", "max_time_s"),
                      ("--target-ci", "target_rel_ci"), ("--concurrency-time", "concurrency_s")):
        s.add_argument(flag, type=float, dest=key)
    i = r.add_argument_group("interleaved rounds (the latency cells, every route side by side; bench.rounds)")
    i.add_argument("--rounds", type=float, dest="rounds", metavar="N",
                   help="rounds per batch size, each a turn for every route (default 12, quick 6; 0: each cell alone)")
    i.add_argument("--turn", type=float, dest="turn_s", metavar="S", help="seconds of one route's turn (default 0.1)")
    i.add_argument("--processes", type=float, dest="processes", metavar="N",
                   help="warm worker processes per route, turns alternating between them (default 2)")
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


def decision_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def _scenario_dest(flag: str) -> str:
    return "scenario__" + flag.lstrip("-").replace("-", "_")


MATRIX_FLAGS = ("scenarios", "config", "profile", "models", "strategies", "batch_sizes", "threads", "concurrency",
                "payload_sizes", "seed", "model_factory", "plugin", "cpus", "malloc", "shard")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
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
        "malloc": args.malloc, "decision": decision_overrides(args),
        "sampling": {k: getattr(args, k) for k in ("warmup_s", "min_time_s", "max_time_s", "target_rel_ci", "concurrency_s",
                                                   "rounds", "turn_s", "processes")
                     if getattr(args, k, None) is not None},
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


def plugins_in(argv: list[str]) -> list[str]:
    """The --plugin modules on the command line, imported before the parser is built so that the
    flags of the strategies and scenarios they register are known."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugin="):
            out.append(a.split("=", 1)[1])
    return out
