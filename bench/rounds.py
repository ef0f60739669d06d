"""Interleaved rounds: how the run measures the cells of a scenario that asks for them (``latency``).

A machine's speed drifts, by 1.8x for twenty minutes on the machines this runs on. Measured one cell
at a time, a slow period lands on whichever routes it meets. Here every route a comparison holds is
measured in the same moments instead. For one model, thread count and allocator (a *group*), each
route gets ``processes`` warm workers (``bench.worker`` job ``warm``), all alive at once; for each
batch size the group is measured in rounds, each round giving every route one turn of ``turn_s``
seconds, in an order that rotates and reverses between rounds (``rematch.turn_order``), and a route's
turns alternating between its processes. A slow period then hits every route alike:

- a cell's figures pool its turns, from all of its processes; its median's interval covers both the
  sampling (within a process) and the spread between its processes' medians;
- each round's medians (``rounds.json``, one ``rematch.Group`` per batch) give paired ratios between
  any two routes, which the decision ranks by, so drift cancels;
- the between-process spread is the tie margin the decision uses (``process_spread``).

Each route's first worker opens alone, so its cold start is measured with nothing else starting (the
others wait, idle, on their pipes); the rest, whose cold starts are not used, open as many at a time
as there are CPUs. At most ``max_workers`` are alive at once: past it, a route's processes
are measured in successive waves (each with every route), and past it again the routes are split
into sets that all hold the group's reference route, so every ratio to it stays paired. A worker
that dies gets one fresh replacement per route and group; if that one dies too, only the cells it
had not finished fail. Cells are written as their batch finishes, so ``--resume`` picks up inside a
group. Memory is per cell: each batch's steady RSS and peak are taken while that batch ran, over the
worker's baseline before the runtime loaded (``bench.worker.warm``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import Cell, CellResult, Correctness, Cpu, Memory, Status, Throughput
from bench.rematch import Group, WarmWorker, WorkerGone, merged, turn_order
from bench.stats import summarize
from plumbing.files import atomic_write_json

FILE = "rounds.json"
READY_TIMEOUT_S = 300.0
MAX_RAW = 50_000  # raw samples a cell keeps (evenly thinned past it; its summary uses every sample)


@dataclass
class Partial:
    """One process's share of one cell: what ``bench.worker.warm`` answers to ``finish`` (JSON, checked here)."""

    samples_ns: list[int]
    calls: int
    median_ns: float | None
    sum_ns: int
    phases_ns: dict[str, list[int]]
    cpu_s: float
    cpu_by_role: dict[str, float]
    memory: dict[str, Any]
    correctness: dict[str, Any]
    session: dict[str, Any]
    payload_bytes: int
    first_call_s: float
    warmup_calls: int
    measure_s: float
    rest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> Partial:
        if not isinstance(d, dict):
            raise WorkerGone("its cell's share was not a JSON object")
        try:
            samples = [int(x) for x in d["samples_ns"]]
            median = d.get("median_ns")
            if any(x <= 0 for x in samples) or (median is not None and not (math.isfinite(float(median)) and median > 0)):
                raise ValueError("a time that is not a positive number")
            Memory.from_json(d["memory"])  # the nested records too: a malformed one fails this worker, not the run
            Correctness.from_json(d["correctness"])
            return cls(samples, int(d["calls"]), None if d.get("median_ns") is None else float(d["median_ns"]),
                       int(d["sum_ns"]), {str(k): [int(x) for x in v] for k, v in dict(d.get("phases_ns") or {}).items()},
                       float(d["cpu_s"]), {str(k): float(v) for k, v in dict(d.get("cpu_by_role") or {}).items()},
                       dict(d["memory"]), dict(d["correctness"]), dict(d.get("session") or {}),
                       int(d["payload_bytes"]), float(d["first_call_s"]), int(d["warmup_calls"]),
                       float(d["measure_s"]),
                       {k: d[k] for k in ("worker_pid", "cpu_affinity", "malloc_env", "thread_env") if k in d})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WorkerGone(f"its cell's share is malformed ({type(e).__name__}: {e})") from None


@dataclass
class Plan:
    """Who is alive together: waves of (route, process index), each measured in full before the next, and
    how many rounds each wave gives every batch (a set of routes split over waves shares the rounds)."""

    waves: list[list[tuple[str, int]]]
    rounds: list[int]

    @classmethod
    def of(cls, routes: list[str], processes: int, max_workers: int, rounds: int) -> Plan:
        ref, rest = routes[0], routes[1:]
        room = max(2, max_workers)
        sets = [routes] if len(routes) <= room else [[ref, *rest[i:i + room - 1]] for i in range(0, len(rest), room - 1)]
        waves: list[list[tuple[str, int]]] = []
        per: list[int] = []
        for s in sets:
            together = max(1, min(processes, room // len(s)))
            mine = [[(r, k) for k in range(g, min(processes, g + together)) for r in s]
                    for g in range(0, processes, together)]
            waves += mine
            per += [max(2, math.ceil(rounds / len(mine)))] * len(mine)
        return cls(waves, per)

    @property
    def alive_at_most(self) -> int:
        return max(map(len, self.waves), default=0)


def spread(medians: list[float]) -> float | None:
    """Between-process spread of a cell: (largest - smallest) process median over their middle; None from one process."""
    m = [x for x in medians if x and x > 0]
    if len(m) < 2:
        return None
    return (max(m) - min(m)) / float(np.median(m))


def pool(cell: Cell, parts: list[Partial], ready: dict[str, Any], rounds: int, turn_s: float,
         processes: int) -> CellResult:
    """A cell's record from its processes' shares: samples pooled, the median's interval widened to cover
    every process's median, CPU and calls summed, correctness the worst, memory from its first process."""
    lat_ns = np.concatenate([np.asarray(p.samples_ns, dtype=np.int64) for p in parts])
    if not len(lat_ns):
        return CellResult(cell, Status.ERROR, "no calls were timed in its turns")
    lat = summarize(lat_ns / 1e9)
    medians = [p.median_ns / 1e9 for p in parts if p.median_ns]
    lat = replace(lat, ci_low=min([lat.ci_low, *medians]), ci_high=max([lat.ci_high, *medians]))
    lat = replace(lat, rel_ci=(lat.ci_high - lat.ci_low) / 2 / lat.p50 if lat.p50 > 0 else math.inf)
    calls, sum_ns = sum(p.calls for p in parts), sum(p.sum_ns for p in parts)
    phases: dict[str, list[int]] = {}
    by_role: dict[str, float] = {}
    for p in parts:
        for k, v in p.phases_ns.items():
            phases.setdefault(k, []).extend(v)
        for k, v in p.cpu_by_role.items():
            by_role[k] = by_role.get(k, 0.0) + v
    cpu_s = sum(p.cpu_s for p in parts)
    bad = [p.correctness for p in parts if not p.correctness.get("ok", False)]
    checked = bad[0] if bad else parts[0].correctness
    if len(bad) > 1:
        checked = {**checked, "problems": [str(x) for b in bad for x in b.get("problems", [])]}
    status, error = Status.OK, ""
    if bad:
        status, error = Status.INVALID, "wrong outputs: " + "; ".join(map(str, checked.get("problems", [])))
    first = parts[0]  # its first process (bench.rounds.GroupRun orders them)
    cold = {**dict(ready.get("cold_start_phases") or {}), "first call": first.first_call_s}
    open_s = float(ready.get("open_s") or 0.0)
    sampling = {"method": "rounds", "rounds": rounds, "turn_s": turn_s, "processes": len(parts),
                "processes_asked": processes, "process_p50_s": medians, "process_spread": spread(medians),
                "warmup_calls": sum(p.warmup_calls for p in parts), "converged": True, "stop_reason": "rounds",
                "process_added_peak": [p.memory.get("added_peak") for p in parts]}
    kept = lat_ns if len(lat_ns) <= MAX_RAW else lat_ns[np.linspace(0, len(lat_ns) - 1, MAX_RAW).astype(int)]
    return CellResult(
        cell, status, error, latency=lat, samples_ns=kept.tolist(),
        throughput=Throughput.of(calls / (sum_ns / 1e9) if sum_ns else 0.0, cell.batch), open_s=open_s,
        first_call_s=first.first_call_s, cold_start_s=open_s + first.first_call_s, cold_start_phases=cold,
        phases={k: summarize(np.asarray(v) / 1e9) for k, v in phases.items() if v},
        payload_bytes=first.payload_bytes, memory=Memory.from_json(first.memory),
        cpu=Cpu(cpu_s, calls, by_role, cpu_s / calls if calls else None), sampling=sampling,
        correctness=Correctness.from_json(checked), session=first.session,
        measure_s=sum(p.measure_s for p in parts), **first.rest)


class GroupRun:
    """One group measured in interleaved rounds. ``routes``: name -> its prepared artifacts (or None), in the
    matrix's order (the first is the reference every ratio is paired against); ``pending``: ids of the cells
    to measure; ``on_cell(result)`` gets each cell as soon as its batch has finished in every wave."""

    def __init__(self, runner: Any, model: Any, threads: int, malloc: str, routes: dict[str, Any], batches: list[int],
                 cells: list[Cell], on_cell: Any) -> None:
        self.runner, self.model, self.threads, self.malloc = runner, model, threads, malloc
        self.routes, self.batches, self.on_cell = routes, batches, on_cell
        self.cells = {(c.strategy, c.batch): c for c in cells}
        self.pending = {c.id for c in cells}
        s = runner.cfg.sampling
        self.turn_s, self.processes = s.turn_s, s.processes
        self.plan = Plan.of(list(routes), s.processes, s.max_workers, s.rounds)
        self.groups = {b: Group(model.spec.name, b, threads, malloc, list(routes)) for b in batches}
        self.parts: dict[tuple[str, int], list[tuple[int, Partial]]] = {}  # (route, batch) -> (process, its share)
        self.opening: list[WarmWorker] = []  # every worker started, closed whatever happens
        self.logs: dict[str, str] = {}  # the end of a route's dead worker's log: the cell's traceback
        self.rounds_of: dict[tuple[str, int], int] = {}
        self.ready: dict[str, dict[str, Any]] = {}  # each route's first process: its cold start
        self.retried: set[str] = set()
        self.failed: dict[str, str] = {}
        self.emitted: set[tuple[str, int]] = set()
        self.workers: dict[tuple[str, int], WarmWorker] = {}
        self.wave = 0
        self.kept: set[int] = set()  # batches whose rounds are in rounds.json
        self.t0 = time.monotonic()

    def cell(self, name: str, batch: int) -> Cell:
        return self.cells.get((name, batch)) or Cell(self.model.spec.name, name, batch, self.threads, 1, self.malloc)

    # -- workers ------------------------------------------------------------------------------------------------
    def _spawn(self, name: str, k: int) -> WarmWorker | None:
        cell = self.cell(name, self.batches[0])
        job = self.runner.warm_job(cell, self.model, self.routes[name], self.batches)
        log = self.runner.run_dir.logs_dir / f"{cell.key}.rounds-p{k}{'-again' if name in self.retried else ''}.log"
        try:
            w = WarmWorker(job, self.runner.work, log, self.threads, self.runner.cfg.cpus,
                           self.malloc or self.runner.cfg.malloc[0])
            self.opening.append(w)
            return w
        except OSError as e:
            return self._lost(name, f"could not start a worker: {e}")

    def _ready(self, w: WarmWorker, name: str, k: int, warm_to: int | None = None) -> WarmWorker | None:
        """Wait until ``w`` is warm (at ``warm_to``, when given); one that dies opening is replaced once per route."""
        try:
            ready = w.read(READY_TIMEOUT_S)
            if not ready.get("ready"):
                raise WorkerGone("its first answer was not 'ready'")
            if k == 0 or name not in self.ready:  # the cold start: a process that opened with nothing else starting
                self.ready.setdefault(name, ready)
            if warm_to is not None and warm_to != self.batches[0]:
                w.ask({"batch": warm_to, "warm": True}, 120.0)
            return w
        except WorkerGone as e:
            w.close()
            self.logs[name] = w.log_tail()
            how = "failed" if e.reported else "died"
            if name in self.retried:
                return self._lost(name, f"its worker {how} opening, and so did a fresh one ({e})")
            self.retried.add(name)
            self.runner.progress.note(f"  {name}: its worker {how} opening ({e}); starting a fresh one")
            return self._open(name, k, warm_to)

    def _open(self, name: str, k: int, warm_to: int | None = None) -> WarmWorker | None:
        """Open route ``name``'s process ``k`` alone and wait until it is warm."""
        w = self._spawn(name, k)
        return None if w is None else self._ready(w, name, k, warm_to)

    def _open_wave(self, wave: list[tuple[str, int]]) -> None:
        """Each route's first process opens alone, so its cold start is measured with nothing else starting; the
        rest, whose cold starts are not used, open as many at a time as there are CPUs to run them."""
        later = []
        for name, k in wave:
            if name in self.failed:
                continue
            if k == 0 or name not in self.ready:
                w = self._open(name, k)
                if w is not None:
                    self.workers[(name, k)] = w
            else:
                later.append((name, k))
        at_once = max(1, len(self.runner.cfg.cpus or os.sched_getaffinity(0)))
        for i in range(0, len(later), at_once):
            started = [(key, self._spawn(*key)) for key in later[i:i + at_once]]
            for (name, k), w in started:
                if w is not None and (w := self._ready(w, name, k)) is not None:
                    self.workers[(name, k)] = w

    def _lost(self, name: str, why: str) -> None:
        self.runner.progress.note(f"  {name}: {why}")
        self.failed.setdefault(name, why)
        return None

    def _ask(self, key: tuple[str, int], msg: dict[str, Any], timeout_s: float, batch: int) -> dict[str, Any] | None:
        """``msg`` to a worker; a worker that dies is replaced once per route (warmed to ``batch``), and the
        request asked again; a second death, or a failed replacement, ends the route for this group."""
        name = key[0]
        try:
            return self.workers[key].ask(msg, timeout_s)
        except WorkerGone as e:
            w = self.workers.pop(key)
            w.close()
            self.logs[name] = w.log_tail()
            how = "failed" if e.reported else "died"
            if name in self.retried or msg.get("finish"):
                self._lost(name, f"its worker {how} ({e})")
                return None
            self.retried.add(name)
            self.runner.progress.note(f"  {name}: its worker {how} ({e}); starting a fresh one")
            w = self._open(name, key[1], warm_to=batch)
            if w is None:
                return None
            self.workers[key] = w
            try:
                return w.ask(msg, timeout_s)
            except WorkerGone as e2:
                w = self.workers.pop(key)
                w.close()
                self.logs[name] = w.log_tail()
                self._lost(name, f"its worker {'failed' if e2.reported else 'died'} again ({e2})")
                return None

    # -- the rounds ---------------------------------------------------------------------------------------------
    def run(self) -> dict[int, Group]:
        """Measure the group; each batch's rounds go to rounds.json as the batch finishes."""
        self.t0 = time.monotonic()
        for i, wave in enumerate(self.plan.waves):
            self.wave = i
            try:
                self._open_wave(wave)
                for j, b in enumerate(self.batches):
                    self._batch(b, wave, warm=j > 0)
            finally:  # every worker this wave started, the ones still opening included (an interrupt, an error)
                for w in {id(w): w for w in [*self.workers.values(), *self.opening]}.values():
                    w.close()
                self.workers, self.opening = {}, []
        for b in self.batches:
            for name in self.routes:
                self._emit(name, b)
            if self.groups[b].medians or any(n in self.failed for n in self.routes):
                self._keep(b)
        return self.groups

    def _batch(self, b: int, wave: list[tuple[str, int]], warm: bool) -> None:
        names = [n for n in dict.fromkeys(n for n, _ in wave) if self.cell(n, b).id in self.pending]
        if not names:
            return
        if warm:  # the first batch warmed up as each worker opened
            for key in [k for k in self.workers if k[0] in names]:
                self._ask(key, {"batch": b, "warm": True}, 120.0, b)
        for r in range(self.plan.rounds[self.wave]):
            if self.runner.before_round is not None:  # outside every turn (a benchmark plants a slow period there)
                self.runner.before_round(self.groups[b], r)
            medians: dict[str, float] = {}
            for name in turn_order(names, r):
                mine = sorted(k for (n, k) in self.workers if n == name)
                if not mine:
                    continue
                got = self._ask((name, mine[r % len(mine)]), {"batch": b, "seconds": self.turn_s},
                                60.0 + 20 * self.turn_s, b)
                if got is not None:
                    try:
                        medians[name] = float(got["median_ns"])
                        self.rounds_of[(name, b)] = self.rounds_of.get((name, b), 0) + 1
                    except (KeyError, TypeError, ValueError):
                        self._lost(name, "its turn's answer held no median")
            if medians:
                self.groups[b].medians.append(medians)
        for key in [k for k in self.workers if k[0] in names]:
            got = self._ask(key, {"batch": b, "finish": True}, 120.0, b)
            if got is not None:
                try:
                    self.parts.setdefault((key[0], b), []).append((key[1], Partial.from_json(got.get("partial"))))
                except WorkerGone as e:
                    self._lost(key[0], str(e))
        later = {n for w in self.plan.waves[self.wave + 1:] for n, _ in w}
        for name in names:
            if name not in later:
                self._emit(name, b)
        if not later & set(names):  # the batch is done: its rounds are kept now, so --resume pairs its cells
            self._keep(b)

    def _keep(self, b: int) -> None:
        if b in self.kept:
            return
        self.kept.add(b)
        g = self.groups[b]
        g.errors = {n: e for n, e in self.failed.items() if (n, b) not in self.parts}
        g.seconds = time.monotonic() - self.t0
        s = self.runner.cfg.sampling
        write(self.runner.run_dir.path, [g], s.rounds, s.turn_s, s.processes)

    def _emit(self, name: str, b: int) -> None:
        if (name, b) in self.emitted or self.cell(name, b).id not in self.pending:
            return
        self.emitted.add((name, b))
        cell, parts = self.cell(name, b), [p for _, p in sorted(self.parts.get((name, b), []), key=lambda x: x[0])]
        if parts:
            result = pool(cell, parts, self.ready.get(name, {}), self.rounds_of.get((name, b), 0), self.turn_s,
                          self.processes)
            if name in self.failed:
                result = replace(result, sampling={**result.sampling, "lost": self.failed[name]})
        else:
            result = CellResult(cell, Status.ERROR, self.failed.get(name, "no process of it finished its turns"),
                                self.logs.get(name, ""))
        self.on_cell(replace(result, wall_s=time.monotonic() - self.t0))  # from the group's start


def estimate_s(n_routes: int, n_batches: int, rounds: int, turn_s: float, processes: int) -> float:
    """Measuring time of one group, turns only (opening, warm-ups and the rest come on top)."""
    return n_routes * n_batches * rounds * turn_s


def read(run_path: Path) -> dict[tuple[str, int, int, str], Group]:
    """The run's rounds by (model, batch, threads, allocator); empty when there are none or the file is unreadable."""
    try:
        d = json.loads((Path(run_path) / FILE).read_text())
        return {g.key: g for g in (Group.from_json(x) for x in d.get("groups", []))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write(run_path: Path, groups: Any, rounds: int, turn_s: float, processes: int) -> None:
    """Add ``groups`` to the run's rounds.json; a group measured again (``--resume`` inside it) keeps its
    earlier rounds and gains the new ones."""
    held = read(run_path)
    for g in groups:
        old = held.get(g.key)
        if old is not None:
            g = merged(old, g)
        held[g.key] = g
    atomic_write_json(Path(run_path) / FILE, {"rounds": rounds, "turn_s": turn_s, "processes": processes,
                                              "groups": [g.to_json() for g in held.values()]})
