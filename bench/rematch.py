"""Close leads measured again, side by side: the rematch.

A run's cells are measured one after another, minutes apart, and on a shared machine the same call
can be a few percent slower for minutes at a time; two routes whose medians are within that drift
cannot be ranked from their cells. After the matrix, for each model, batch, thread count and
allocator where some caller language's leader is close to another route it can call (a lead under
the tie margin, or overlapping 95% intervals of the medians), those routes are opened again in warm
workers, all alive at once, and measured in alternating rounds: each worker in turn makes about
``turn_s`` of calls while the others sleep, the order rotating every round (A B, B A, ...). A slow
period then hits every route alike, and the per-round ratio B/A pairs out the drift. The decision
(reports.decision) ranks the contenders by that paired ratio: two routes whose ratio's 95% interval
contains 1, or whose measured lead is under the tie margin, are a tie.

Written as ``rematch.json`` in the run folder. Only JSON crosses the process boundary, over a pair
of pipes (the workers' stdout is their log)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import allocator
from bench.constraints import LANGUAGES
from bench.record import Cell, CellResult
from bench.runner import PrepareFailed, _child_setup, worker_env
from plumbing.errors import UserError
from plumbing.files import atomic_write_json
from plumbing.processes import describe_exit, kill_group
from strategies.base import RouteTable

FILE = "rematch.json"
DEFAULT_ROUNDS = 10
TURN_S = 0.1  # each worker's share of a round
MOST_PER_GROUP = 4  # contenders per caller language (its leader and the closest to it) measured together
READY_TIMEOUT_S = 180.0
# Student's t at 97.5% by degrees of freedom (1-30); above 30, the normal's 1.96 is within 4%
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def close_to(first_p50: float, first_high: float | None, p50: float, low: float | None, tie_within: float) -> bool:
    """Whether a route measured in its own cell is within the noise of the leader's: a lead under the
    tie margin, or overlapping 95% intervals of the two medians. Shared by the rematch (which routes
    to measure again) and the decision (which routes are tied where no rematch ran)."""
    if p50 <= first_p50 * (1 + tie_within):
        return True
    return low is not None and first_high is not None and not math.isnan(low) and not math.isnan(first_high) \
        and low <= first_high


@dataclass(frozen=True)
class Paired:
    """b's time over a's, the geometric mean over rounds, with its 95% interval (Student's t on the
    log ratios: each round's ratio is one paired observation)."""

    ratio: float
    low: float
    high: float
    rounds: int

    @property
    def indistinct(self) -> bool:
        return self.low <= 1.0 <= self.high


def paired(medians: list[dict[str, float]], a: str, b: str) -> Paired | None:
    logs = np.array([math.log(r[b] / r[a]) for r in medians if r.get(a) and r.get(b)])
    n = len(logs)
    if n < 3:
        return None
    mean, sd = float(logs.mean()), float(logs.std(ddof=1))
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / math.sqrt(n)
    return Paired(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


@dataclass
class Group:
    model: str
    batch: int
    threads: int
    malloc: str
    strategies: list[str]
    medians: list[dict[str, float]] = field(default_factory=list)  # per round: strategy -> median ns of its turn
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.model, self.batch, self.threads, self.malloc)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "batch": self.batch, "threads": self.threads, "malloc": self.malloc,
                "strategies": self.strategies, "medians_ns": self.medians, "errors": self.errors,
                "seconds": round(self.seconds, 2)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Group:
        return cls(str(d["model"]), int(d["batch"]), int(d["threads"]), str(d.get("malloc", "")),
                   [str(s) for s in d["strategies"]],
                   [{str(k): float(v) for k, v in r.items()  # a hand-edited or broken file: only real times count
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0}
                    for r in d.get("medians_ns", []) if isinstance(r, dict)],
                   {str(k): str(v) for k, v in (d.get("errors") or {}).items()}, float(d.get("seconds", 0.0)))


def contests(results: list[CellResult], facts: RouteTable, tie_within: float,
             most: int = MOST_PER_GROUP) -> list[Group]:
    """The groups worth a rematch: single-caller latency cells where, for some caller language, the
    leader among the valid routes it can call is close to another (``close_to``)."""
    by: dict[tuple[str, int, int, str], list[CellResult]] = {}
    for r in results:
        c = r.cell
        if not r.ok or c.scenario != "latency" or c.concurrency != 1 or not r.p50:
            continue
        by.setdefault((c.model, c.batch, c.threads, c.malloc), []).append(r)
    out = []
    for (model, batch, threads, malloc), rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r.p50)
        chosen: dict[str, float] = {}
        for lang in LANGUAGES:  # each language's leader and its closest rivals, up to ``most`` per language
            mine = [r for r in rs if facts.of(r.cell.strategy).callable_from(lang)]
            if len(mine) < 2:
                continue
            lead = mine[0].latency
            near = [r for r in mine[1:] if close_to(lead.p50, lead.ci_high, r.latency.p50, r.latency.ci_low, tie_within)]
            if near:
                for r in [mine[0], *near][:most]:
                    chosen[r.cell.strategy] = r.latency.p50
        if len(chosen) >= 2:
            out.append(Group(model, batch, threads, malloc, sorted(chosen, key=chosen.__getitem__)))
    return out


def merged(old: Group, new: Group) -> Group:
    """Two runs of rounds of one group as one: the rounds of both, and each route's error only where the newer
    rounds did not measure it (a route that failed in one and was measured in the other keeps its pairs)."""
    measured = {s for r in new.medians for s in r}
    errors = {s: e for s, e in old.errors.items() if s not in measured}
    return Group(new.model, new.batch, new.threads, new.malloc, list(dict.fromkeys(old.strategies + new.strategies)),
                 old.medians + new.medians, {**errors, **new.errors}, old.seconds + new.seconds)


def load(run_path: Path) -> dict[tuple[str, int, int, str], Group]:
    """The run's rounds side by side, by (model, batch, threads, allocator): the interleaved rounds its
    latency cells were measured in (``rounds.json``, bench.rounds) with the rematch's rounds of the close
    leads after them; empty where neither ran or the files are unreadable."""
    out: dict[tuple[str, int, int, str], Group] = {}
    for name in ("rounds.json", FILE):
        try:
            d = json.loads((Path(run_path) / name).read_text())
            for g in (Group.from_json(x) for x in d.get("groups", [])):
                old = out.get(g.key)
                out[g.key] = g if old is None else merged(old, g)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


# -- the warm workers -----------------------------------------------------------------------------

class WorkerGone(Exception):
    """The worker cannot go on: it died (``reported`` False) or said what failed in it (``reported`` True)."""

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


class WarmWorker:
    """One strategy's session, opened and warmed up in a worker process (``bench.worker`` job ``warm``),
    kept alive to measure turns on request. Its stdout and stderr are its log; requests and answers
    travel as JSON lines over two pipes."""

    def __init__(self, job: dict[str, Any], job_dir: Path, log_path: Path, threads: int, cpus: list[int] | None,
                 malloc: str) -> None:
        job_dir.mkdir(parents=True, exist_ok=True)
        self.job_file = job_dir / f"{log_path.stem}.job.json"
        self.log_path = log_path
        self._buf = b""
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        try:
            atomic_write_json(self.job_file, {**job, "kind": "warm", "fds": [child_reads, child_writes],
                                              "out": str(job_dir / f"{log_path.stem}.result.json"),
                                              "spawned_at": time.time()})
            with open(log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.worker", str(self.job_file)], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=worker_env(threads, malloc), start_new_session=True,
                    preexec_fn=_child_setup(cpus), pass_fds=(child_reads, child_writes))
        except BaseException:
            os.close(parent_writes)
            os.close(parent_reads)
            self.job_file.unlink(missing_ok=True)
            raise
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self.w, self.r = parent_writes, parent_reads

    def read(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerGone(f"no answer within {timeout_s:.0f}s")
            ready, _, _ = select.select([self.r], [], [], min(left, 1.0))
            if not ready and self.proc.poll() is not None:  # dead, though something it started may hold the pipe
                raise WorkerGone(f"the worker {describe_exit(self.proc.returncode)}; {self._tail()}")
            if ready:
                chunk = os.read(self.r, 65536)
                if not chunk:
                    try:
                        rc = self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        rc = None
                    raise WorkerGone(f"the worker {describe_exit(rc)}; {self._tail()}")
                self._buf += chunk
                if len(self._buf) > 64 << 20:  # a cell's share holds up to 50,000 samples
                    raise WorkerGone("the worker sent an over-long line")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise WorkerGone(f"the worker sent something that is not JSON: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise WorkerGone("the worker sent something that is not a JSON object")
        if msg.get("error"):
            raise WorkerGone(str(msg["error"])[:1000], reported=True)
        return msg

    def ask(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            os.write(self.w, (json.dumps(msg) + "\n").encode())
        except OSError as e:
            raise WorkerGone(f"the worker is gone ({e.strerror}); {self._tail()}") from None
        return self.read(timeout_s)

    def log_tail(self, lines: int = 80) -> str:
        """The end of the worker's log (a runtime's own crash report lands there)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return f"its log ends: {lines[-1][:200]}" if lines else "its log is empty"

    def close(self) -> None:
        try:
            os.write(self.w, b'{"stop": true}\n')
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            kill_group(self.proc)
            for fd in (self.w, self.r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.job_file.unlink(missing_ok=True)
            Path(str(self.job_file).replace(".job.json", ".result.json")).unlink(missing_ok=True)


def run(runner: Any, groups: list[Group], rounds: int, turn_s: float = TURN_S,
        before_round: Any = None) -> list[Group]:
    """Measure each group's contenders in alternating rounds in warm workers (``runner`` provides the
    models, artifacts and cell jobs); a worker that fails to open or dies loses only its own figures.
    ``before_round(group, r)`` runs before each round, outside every turn (a benchmark plants a slow period there)."""
    import strategies
    from bench.progress import fmt_duration

    strategies.discover(runner.cfg.plugins)
    models = runner.probe(list(dict.fromkeys(g.model for g in groups)))
    for i, g in enumerate(groups, 1):
        t0 = time.monotonic()
        runner.progress.note(f"rematch {i}/{len(groups)}: {g.model} batch {g.batch}, {', '.join(g.strategies)} "
                             f"({rounds} alternating rounds of {turn_s:g}s turns)")
        state = models[g.model]
        workers: dict[str, WarmWorker] = {}
        try:
            if state.error:
                raise UserError(state.error)
            for s in g.strategies:
                strategy = strategies.get(s)
                prep = runner.prepare(strategy, state) if strategy.needs_artifacts else None
                if isinstance(prep, PrepareFailed):
                    g.errors[s] = prep.error[:300]
                    continue
                cell = Cell(g.model, s, g.batch, g.threads, 1, g.malloc)
                workers[s] = WarmWorker(runner.cell_job(cell, state, prep), runner.work,
                                        runner.run_dir.logs_dir / f"rematch-{cell.key}.log", g.threads, runner.cfg.cpus,
                                        g.malloc or runner.cfg.malloc[0] or allocator.DEFAULT)
            for s, w in list(workers.items()):  # they start together; each answers once it is warm
                try:
                    if not w.read(READY_TIMEOUT_S).get("ready"):
                        raise WorkerGone("its first answer was not 'ready'")
                except WorkerGone as e:
                    g.errors[s] = f"could not open: {e}"
                    w.close()
                    del workers[s]
            for r in range(rounds):
                if len(workers) < 2:
                    break
                if before_round is not None:
                    before_round(g, r)
                medians: dict[str, float] = {}
                for s in turn_order(list(workers), r):
                    try:
                        medians[s] = float(workers[s].ask({"seconds": turn_s}, 60.0 + 20 * turn_s)["median_ns"])
                    except (WorkerGone, KeyError, TypeError, ValueError) as e:
                        g.errors[s] = f"died in round {r + 1}: {e}"
                        workers.pop(s).close()
                g.medians.append(medians)
        except UserError as e:
            g.errors["*"] = str(e)
        finally:
            for w in workers.values():
                w.close()
        g.seconds = time.monotonic() - t0
        runner.progress.note(f"  {_describe(g)} ({fmt_duration(g.seconds)})")
    return groups


def turn_order(names: list[str], r: int) -> list[str]:
    """Round r's order: rotated every two rounds and reversed on odd ones (A B C, C B A, B C A, A C B, ...), so over
    the rounds each contender goes before each other as often as after, and drift within a round cancels."""
    k = (r // 2) % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def _describe(g: Group) -> str:
    if len(g.strategies) < 2 or not g.medians:
        return "no rematch: " + "; ".join(f"{s}: {e}" for s, e in g.errors.items())
    first = g.strategies[0]
    parts = []
    for s in g.strategies[1:]:
        p = paired(g.medians, first, s)
        parts.append(f"{s}/{first} {p.ratio:.3f}x (95% {p.low:.3f}-{p.high:.3f})" if p else f"{s}: too few rounds")
    return "; ".join(parts) + ("; " + "; ".join(f"{s}: {e}" for s, e in g.errors.items()) if g.errors else "")


def write(run_path: Path, groups: list[Group], rounds: int, turn_s: float) -> None:
    atomic_write_json(Path(run_path) / FILE, {"rounds": rounds, "turn_s": turn_s, "groups": [g.to_json() for g in groups]})
