"""Runs a matrix of cells, each in a fresh worker process, and writes results as they finish.

The runner knows strategies only through the registry and the Strategy interface; everything
strategy-specific happens in the worker process, inside the strategy's own code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import strategies
from bench import allocator
from bench.config import RunConfig
from bench.progress import Progress, fmt_duration
from bench.record import Cell, CellResult, Prepare, Status
from bench.results import RunDir
from fixtures.specs import ModelSpec
from plumbing.cache import default_cache_dir, reference_path, sweep_stale, sweep_temp
from plumbing.errors import UserError
from plumbing.files import EX_CANNOT_WRITE, atomic_write_json
from plumbing.processes import die_with_parent, kill_group

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STARTUP_ALLOWANCE_S = 180.0  # imports, runtime start, server start, first call
PREPARE_TIMEOUT_S = 1800.0


def build_matrix(cfg: RunConfig) -> list[Cell]:
    """Every scenario's cells, in the run's scenario order, deduplicated (bench.scenarios)."""
    from bench import scenarios

    scenarios.discover(cfg.plugins)
    cells: dict[str, Cell] = {}
    for name in cfg.scenarios:
        for c in scenarios.get(name).cells(cfg, cfg.scenario_options.get(name, {})):
            cells.setdefault(c.id, c)
    return list(cells.values())


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes i/n, e.g. 2/4; got {text!r}") from None
    if not 1 <= i <= n:
        raise UserError(f"--shard {text}: i must be between 1 and n")
    return i, n


def shard_cells(cells: list[Cell], i: int, n: int) -> list[Cell]:
    """The i-th of n deterministic, disjoint slices of a matrix; together they are the matrix. A slice holds
    whole comparisons (every route of one model, batch, threads, callers, allocator and scenario point), every
    n-th of them, so the routes a decision compares are measured side by side in the same shard (bench.rounds)."""
    keys = list(dict.fromkeys(_comparison(c) for c in cells))
    mine = set(keys[i - 1::n])
    return [c for c in cells if _comparison(c) in mine]


def _comparison(c: Cell) -> tuple[Any, ...]:
    return (c.model, c.batch, c.threads, c.concurrency, c.malloc, c.scenario, c.point)


def worker_env(threads: int, malloc: str = allocator.DEFAULT) -> dict[str, str]:
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, PYTHONHASHSEED="0")
    # Mono keeps a performance-counter area in /dev/shm (mono.PID) that a killed process leaves behind;
    # nothing here reads it, so a worker's Mono makes none
    env.setdefault("MONO_DISABLE_SHARED_AREA", "1")
    for k in allocator.STEADY_ENV:  # the run's policy, not whatever the caller's shell had
        env.pop(k, None)
    env.update(allocator.preload_env(env.pop("LD_PRELOAD", ""), malloc))
    paths = [str(Path.cwd()), str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


_current: subprocess.Popen | None = None


def _child_setup(cpus: list[int] | None):
    """Runs in the child before exec: die with the runner; pin to ``cpus`` (inherited by servers)."""

    def setup() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def spawn_job(job: dict[str, Any], job_dir: Path, log_path: Path, timeout_s: float, threads: int = 1,
              cpus: list[int] | None = None, malloc: str = allocator.DEFAULT) -> dict[str, Any]:
    """Run one job in a fresh interpreter in its own process group. A crash, a signal or a timeout
    becomes an error result naming it, with the tail of the worker's log."""
    global _current
    job_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    name = log_path.stem
    job_file, out_file = job_dir / f"{name}.job.json", job_dir / f"{name}.result.json"
    out_file.unlink(missing_ok=True)
    atomic_write_json(job_file, {**job, "out": str(out_file), "spawned_at": time.time()})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", str(job_file)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=worker_env(threads, malloc), start_new_session=True,
            preexec_fn=_child_setup(cpus),
        )
        _current = proc
        try:
            rc = proc.wait(timeout=timeout_s)
            why = None
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc, why = proc.returncode, f"timed out after {fmt_duration(timeout_s)}"
        finally:
            kill_group(proc)  # anything the worker started (a server) goes with it
            _current = None
    if out_file.exists():
        result = json.loads(out_file.read_text())
        out_file.unlink()
        job_file.unlink(missing_ok=True)
        if result.get("write_error"):  # the folder is full or read-only: the run stops, keeping what it has
            raise OSError(*result["write_error"])
        return result
    if rc == EX_CANNOT_WRITE:
        job_file.unlink(missing_ok=True)
        raise OSError(errno.ENOSPC, "the worker could not write its result", str(out_file))
    if why is None:
        why = f"worker died with signal {signal.Signals(-rc).name}" if rc < 0 else f"worker exited with status {rc} without a result"
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    return {"ok": False, "status": "error", "error": why, "traceback": "\n".join(tail)}


def kill_current() -> None:
    if _current is not None:
        kill_group(_current)


@dataclass
class ModelState:
    spec: ModelSpec
    content_hash: str = ""
    ref_dir: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Prepared:
    info: Prepare  # what the cell's record keeps of it
    artifacts: str  # the folder its sessions open


@dataclass(frozen=True)
class PrepareFailed:
    error: str
    traceback: str = ""


@dataclass
class RunOutcome:
    run: RunDir
    ran: int = 0
    skipped_existing: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    measuring_s: float = 0.0  # the cells' time inside their scenario's measurement


class Runner:
    def __init__(self, cfg: RunConfig, run: RunDir, cache_dir: Path | None = None,
                 progress: Progress | None = None, cells: list[Cell] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run
        self.cache = cache_dir or default_cache_dir()
        self.cells = build_matrix(cfg) if cells is None else cells
        self.progress = progress or Progress(len(self.cells))
        self.work = run.path / ".work"
        self.generator: dict[str, Any] = {}
        self.models: dict[str, ModelState] = {}
        self.before_round: Any = None  # before_round(group, r): called between interleaved rounds (bench.rounds)

    def _timeout(self, cell: Cell) -> float:
        from bench import scenarios

        return STARTUP_ALLOWANCE_S + scenarios.get(cell.scenario).timeout_s(
            self.cfg.sampling, self.cfg.scenario_options.get(cell.scenario, {}))

    def load_generator(self) -> dict[str, Any]:
        """The open-loop generator's own ceiling on this machine, measured once per run (kept in run.json)."""
        meta = self.run_dir.meta()
        if meta.get("load_generator"):
            return meta["load_generator"]
        self.progress.note("measuring the open-loop load generator's own ceiling (a session that does nothing) ...")
        res = spawn_job({"kind": "generator", "callers": 4}, self.work, self.run_dir.logs_dir / "load-generator.log",
                        PREPARE_TIMEOUT_S, 1, self.cfg.cpus, self.cfg.malloc[0])
        if not res.get("ok"):
            self.progress.note(f"  could not measure it: {res.get('error')}; open-loop rates are not checked against it")
            return {}
        out = {k: res[k] for k in ("ceiling_rps", "callers", "max_late", "tried")}
        self.progress.note(f"  {out['ceiling_rps']:,.0f} requests/s with under {out['max_late']:.0%} sent late "
                           f"(rates above half of it are flagged)")
        self.run_dir.write_meta({**meta, "load_generator": out})
        return out


    # -- phases ---------------------------------------------------------------------------------
    def probe(self, names: list[str]) -> dict[str, ModelState]:
        states: dict[str, ModelState] = {}
        for name in names:
            spec = self.cfg.model_spec(name)
            batches = sorted({c.batch for c in self.cells if c.model == name})
            plans = list({json.dumps(p, sort_keys=True): p for p in (self._plan(c) for c in self.cells if c.model == name)
                          if p is not None}.values())
            self.progress.note(f"probing model {name} ({len(batches)} batch sizes"
                               + (f", references for {len(plans)} set(s) of requests" if plans else "") + ")")
            res = spawn_job(
                {"kind": "probe", "model": spec.to_json(), "seed": self.cfg.seed, "batches": batches,
                 "refs_root": str(self.cache / "refs"), "plans": plans},
                self.work, self.run_dir.logs_dir / f"probe-{name}.log", PREPARE_TIMEOUT_S)
            if res.get("user_error"):
                raise UserError(res["user_error"])
            if not res.get("ok"):
                err = str(res.get("error") or "")
                what = "cannot be measured" if "reference output" in err else "failed to build"
                states[name] = ModelState(spec, error=f"model {name} {what}: {err}")
                continue
            states[name] = ModelState(spec.with_outputs(tuple(res["outputs"])), res["content_hash"], res["ref_dir"])
        return states

    def _plan(self, cell: Cell) -> dict[str, Any] | None:
        from bench import scenarios

        return scenarios.get(cell.scenario).reference_plan(cell, self.cfg.scenario_options.get(cell.scenario, {}))

    def artifact_dir(self, strategy: strategies.Strategy, model: ModelState) -> Path:
        key = json.dumps([strategy.name, strategy.source_hash(), strategy.runtime_versions(), model.content_hash,
                          sys.version_info[:2]], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.cache / "artifacts" / strategy.name / f"{model.spec.name}-{digest}"

    def prepare(self, strategy: strategies.Strategy, model: ModelState) -> Prepared | PrepareFailed:
        """The route's artifacts for ``model``: from the cache, or built now in a worker of their own."""
        final = self.artifact_dir(strategy, model)
        done = final / "DONE.json"
        if done.exists():
            return Prepared(Prepare(True, 0.0, json.loads(done.read_text())["seconds"]), str(final))
        hint = f"; {strategy.prepare_hint}" if strategy.prepare_hint else ""
        self.progress.note(f"preparing {strategy.name} artifacts for {model.spec.name} (cached for next time{hint}) ...")
        log = self.run_dir.logs_dir / f"prepare-{strategy.name}-{model.spec.name}.log"
        res = spawn_job(
            {"kind": "prepare", "strategy": strategy.name, "model": model.spec.to_json(), "seed": self.cfg.seed,
             "content_hash": model.content_hash, "artifact_dir": str(final), "plugins": self.cfg.plugins},
            self.work, log, PREPARE_TIMEOUT_S)
        if not res.get("ok"):
            err = res.get("user_error") or res.get("error")
            self.progress.note(f"  {strategy.name} could not prepare {model.spec.name}: {err}")
            return PrepareFailed(f"prepare failed: {err}", str(res.get("traceback") or ""))
        self.progress.note(f"  prepared in {res['seconds']:.1f}s (log: {log})")
        return Prepared(Prepare(False, res["seconds"]), str(final))

    def cell_job(self, cell: Cell, model: ModelState, prep: Prepared | None) -> dict[str, Any]:
        """What a worker needs to open ``cell``'s session and measure it."""
        return {
            "kind": "cell", "cell": cell.to_json(), "model": model.spec.to_json(), "seed": self.cfg.seed,
            "content_hash": model.content_hash, "artifacts": prep.artifacts if prep else None,
            "reference": str(reference_path(model.ref_dir, cell.batch)), "ref_dir": model.ref_dir,
            "sampling": self.cfg.sampling.to_json(),
            "settings": strategies.settings_for(cell.strategy, self.cfg.strategy_settings), "plugins": self.cfg.plugins,
            "scenario_options": self.cfg.scenario_options.get(cell.scenario, {}), "load_generator": self.generator,
        }

    def run_cell(self, cell: Cell, model: ModelState, prep: Prepared | None) -> CellResult:
        job = self.cell_job(cell, model, prep)
        t0 = time.perf_counter()
        res = spawn_job(job, self.work, self.run_dir.logs_dir / f"{cell.key}.log", self._timeout(cell), cell.threads,
                        self.cfg.cpus, cell.malloc or self.cfg.malloc[0])
        wall_s = time.perf_counter() - t0
        if res.get("record"):
            return replace(CellResult.from_json(res["record"]), prepare=prep and prep.info, wall_s=wall_s)
        status = Status.ERROR if res.get("user_error") else Status.parse(res.get("status") or "error")
        return CellResult(cell, status, str(res.get("user_error") or res.get("error") or ""),
                          str(res.get("traceback") or ""), prepare=prep and prep.info, wall_s=wall_s)

    # -- the run --------------------------------------------------------------------------------
    def execute(self) -> RunOutcome:
        outcome = RunOutcome(self.run_dir)
        held = {r.id: r for r in self.run_dir.load_cells(samples=False)}  # what the summary is written from
        pending = [c for c in self.cells if c.id not in held]
        outcome.skipped_existing = len(self.cells) - len(pending)
        self.progress.done = outcome.skipped_existing
        if outcome.skipped_existing:
            self.progress.note(f"resuming: {outcome.skipped_existing} cells already measured, {len(pending)} to go")

        for stale in sweep_stale(self.cache):
            self.progress.note(f"removed a half-built artifact of a builder that died: {stale}")
        for stale in sweep_temp():
            self.progress.note(f"removed a temporary folder of a process that died: {stale}")
        strategies.discover(self.cfg.plugins)
        from bench import scenarios

        scenarios.discover(self.cfg.plugins)
        if any(scenarios.get(c.scenario).needs_load_generator for c in pending):
            self.generator = self.load_generator()
        strats = {name: strategies.get(name) for name in dict.fromkeys(c.strategy for c in pending)}
        avail = {name: s.available() for name, s in strats.items()}
        for name, a in avail.items():
            if not a.ok:
                self.progress.note(f"strategy {name} unavailable here: {a.reason}")
        models = self.models = self.probe(list(dict.fromkeys(c.model for c in pending if avail[c.strategy].ok)))

        prepared: dict[tuple[str, str], Prepared | PrepareFailed | None] = {}

        def settle(cell: Cell) -> CellResult | Prepared | None:
            """The cell's result where it cannot run (skipped, failed to prepare), else its artifacts."""
            strategy = strats[cell.strategy]
            if not avail[cell.strategy].ok:
                return CellResult(cell, Status.SKIPPED, f"unavailable: {avail[cell.strategy].reason}")
            if cell.concurrency > 1 and not strategy.concurrent_calls:
                return CellResult(cell, Status.SKIPPED, f"{cell.strategy} does not allow concurrent calls")
            if models[cell.model].error:
                return CellResult(cell, Status.ERROR, models[cell.model].error)
            key = (cell.strategy, cell.model)
            if key not in prepared:
                prepared[key] = self.prepare(strategy, models[cell.model]) if strategy.needs_artifacts else None
            prep = prepared[key]
            if isinstance(prep, PrepareFailed):
                return CellResult(cell, Status.ERROR, prep.error, prep.traceback)
            return prep

        def record(result: CellResult) -> None:
            self.run_dir.write_cell(result)
            held[result.id] = result.without_samples()
            self.run_dir.write_summary(list(held.values()))
            outcome.measuring_s += result.measure_s or 0.0
            outcome.ran += 1
            outcome.statuses[str(result.status)] = outcome.statuses.get(str(result.status), 0) + 1
            self.progress.finish(result.id, describe_outcome(result))

        groups = self.interleaved_groups(pending)
        in_rounds = {c.id for cells in groups.values() for c in cells}
        if groups:
            from bench import rounds
            from bench.progress import fmt_duration

            sm = self.cfg.sampling
            turns = sum(rounds.estimate_s(len({c.strategy for c in g}), len({c.batch for c in g}), sm.rounds, sm.turn_s,
                                          sm.processes) for g in groups.values())
            routes = max(len({c.strategy for c in g}) for g in groups.values())
            self.progress.note(f"plan: {len(in_rounds)} cells in {len(groups)} group(s) of interleaved rounds (up to "
                               f"{routes} routes x {sm.processes} warm processes, {sm.rounds} rounds of {sm.turn_s:g}s "
                               f"turns per batch size: about {fmt_duration(turns)} of turns), "
                               f"{len(pending) - len(in_rounds)} cells measured alone")
        done_groups: set[tuple[Any, ...]] = set()
        for cell in pending:
            key = (cell.model, cell.threads, cell.malloc, cell.scenario, cell.point)
            if cell.id in in_rounds:
                if key not in done_groups:
                    done_groups.add(key)
                    self._rounds(groups[key], settle, record)
                continue
            self.progress.begin(cell.id)
            got = settle(cell)
            record(got if isinstance(got, CellResult) else self.run_cell(cell, models[cell.model], got))
        return outcome


    # -- interleaved rounds (bench.rounds) -------------------------------------------------------------
    def interleaved_groups(self, pending: list[Cell]) -> dict[tuple[Any, ...], list[Cell]]:
        """The pending cells measured in interleaved rounds, by (model, threads, allocator): those of a scenario
        that asks for it, with one caller, unless ``[sampling] rounds = 0`` (each cell alone)."""
        from bench import scenarios

        out: dict[tuple[str, int, str], list[Cell]] = {}
        if self.cfg.sampling.rounds <= 0:
            return out
        for c in pending:
            if c.concurrency == 1 and scenarios.get(c.scenario).interleaved:
                out.setdefault((c.model, c.threads, c.malloc, c.scenario, c.point), []).append(c)
        return out

    def _rounds(self, cells: list[Cell], settle: Any, record: Any) -> None:
        from bench import rounds
        from bench.progress import fmt_duration

        first = cells[0]
        routes: dict[str, Any] = {}
        runnable: list[Cell] = []
        for c in cells:
            got = settle(c)
            if isinstance(got, CellResult):
                self.progress.begin(c.id)
                record(got)
            else:
                routes.setdefault(c.strategy, got)
                runnable.append(c)
        if not runnable:
            return
        batches = sorted({c.batch for c in runnable})
        s = self.cfg.sampling
        def finished(result: CellResult) -> None:
            prep = routes.get(result.cell.strategy)
            record(replace(result, prepare=prep.info) if prep else result)

        run = rounds.GroupRun(self, self.models[first.model], first.threads, first.malloc, routes, batches,
                              runnable, finished)
        est = rounds.estimate_s(len(routes), len(batches), s.rounds, s.turn_s, s.processes)
        self.progress.note(
            f"{first.model}, {first.threads} thread(s){', ' + first.malloc if first.malloc else ''}: {len(routes)} routes x "
            f"{s.processes} processes ({run.plan.alive_at_most} alive at once), batch {', '.join(map(str, batches))}: "
            f"{s.rounds} interleaved rounds of {s.turn_s:g}s turns (about {fmt_duration(est)} of turns)")
        t0 = time.monotonic()
        run.run()  # cells and rounds are written as each batch finishes
        self.progress.note(f"  done in {fmt_duration(time.monotonic() - t0)}")

    def warm_job(self, cell: Cell, model: ModelState, prep: Prepared | None, batches: list[int]) -> dict[str, Any]:
        """What a warm worker needs to open ``cell``'s route and measure turns at each of ``batches``."""
        return {**self.cell_job(cell, model, prep), "batches": batches,
                "references": {str(b): str(reference_path(model.ref_dir, b)) for b in batches}}


def describe_outcome(r: CellResult) -> str:
    from bench import scenarios

    own = scenarios.lookup(r.cell.scenario).describe(r) if r.status.ran else ""
    invalid = "  INVALID: " + r.error if r.status is Status.INVALID else ""
    if own:
        return own + invalid
    if r.status.ran and r.latency:
        lat = r.latency
        p99 = fmt_time(lat.p99) if lat.p99 is not None else f"n/e (n={lat.n})"
        return f"p50 {fmt_time(lat.p50)}  p99 {p99}" + ("  (noisy)" if lat.noisy else "") + invalid
    return f"{r.status.upper()}: {r.first_error_line[:160]}"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f}µs"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"
