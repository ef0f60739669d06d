"""Timing a session: warm-up, adaptive sampling until the median is stable, and concurrent load."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bench.stats import quantile_ci, summarize
from strategies.base import Arrays, Session


@dataclass(frozen=True)
class SamplingConfig:
    warmup_s: float = 0.3  # warm-up time before any sample is kept
    warmup_calls: int = 5  # and at least this many warm-up calls
    min_time_s: float = 0.5  # keep sampling at least this long ...
    max_time_s: float = 3.0  # ... and stop here even if the median has not settled
    min_samples: int = 30
    max_samples: int = 20_000
    target_rel_ci: float = 0.01  # stop once the median's 95% CI half-width is within 1% of it
    round_s: float = 0.05  # each round of timed calls lasts about this long
    concurrency_s: float = 2.0  # measuring time for N concurrent callers
    tail_quantile: float = 0.0  # e.g. 0.99: also sample until that percentile is bounded and tight (0: off)
    tail_target_rel_ci: float = 0.05  # ... its 95% interval's half-width within this fraction of it
    # interleaved rounds (bench.rounds), the method of the scenarios that ask for it (latency); rounds 0: each cell alone
    rounds: int = 12  # rounds per batch size: each gives every route of the group one turn
    turn_s: float = 0.1  # a route's turn in a round (at least one call)
    processes: int = 2  # warm worker processes per route; their spread is the decision's tie margin
    max_workers: int = 40  # warm workers alive at once: past it, waves (bench.rounds.Plan)

    @classmethod
    def from_json(cls, d: dict) -> SamplingConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Sampled:
    latency_ns: np.ndarray
    phases_ns: dict[str, np.ndarray]
    converged: bool
    rounds: int
    wall_s: float
    warmup_calls: int
    stop_reason: str


def tail_rel_ci(latency: np.ndarray, q: float) -> float:
    """Half-width of the q-quantile's 95% interval relative to it; infinite while the samples
    cannot bound it (MLPerf LoadGen likewise runs until its tail percentile is supported)."""
    x = np.sort(latency)
    ci = quantile_ci(x, q)
    if ci is None:
        return float("inf")
    value = float(np.percentile(x, q * 100))
    return (ci[1] - ci[0]) / 2 / value if value > 0 else float("inf")


def warm_up(session: Session, inputs: Arrays, cfg: SamplingConfig) -> tuple[int, float]:
    """Run until both warmup_s and warmup_calls are reached, but never past warmup_s + max_time_s
    (a call slower than the whole budget warms up once); return calls made and the typical call
    time. Chunks double in size so a foreign runtime's per-chunk crossing does not dominate."""
    start = time.perf_counter()
    t_end, hard_end = start + cfg.warmup_s, start + cfg.warmup_s + cfg.max_time_s
    calls, chunk, per_call = 0, 1, None
    while (calls < cfg.warmup_calls or time.perf_counter() < t_end) and (not calls or time.perf_counter() < hard_end):
        lat = session.time_calls(inputs, chunk).latency_ns
        calls += chunk
        per_call = float(np.median(lat)) / 1e9
        chunk = min(chunk * 2, max(1, int(cfg.round_s / max(per_call, 1e-7))))
    return calls, per_call or 1e-3


def sample(
    session: Session,
    inputs: Arrays,
    cfg: SamplingConfig,
    per_call_s: float,
    between_rounds: Callable[[], None] = lambda: None,
) -> Sampled:
    """Rounds of timed calls until the median's relative CI is below target (after min time/samples),
    or the time budget or sample cap ends. ``between_rounds`` runs outside the timed region."""
    lats: list[np.ndarray] = []
    phases: dict[str, list[np.ndarray]] = {}
    n = rounds = 0
    start = time.perf_counter()
    converged, reason = False, "time budget"
    round_n = max(1, min(int(cfg.round_s / max(per_call_s, 1e-7)), cfg.max_samples))
    while True:
        timings = session.time_calls(inputs, min(round_n, cfg.max_samples - n))
        lats.append(timings.latency_ns)
        for k, v in timings.phases_ns.items():
            phases.setdefault(k, []).append(v)
        n += len(timings.latency_ns)
        rounds += 1
        between_rounds()
        elapsed = time.perf_counter() - start
        if n >= cfg.min_samples and elapsed >= cfg.min_time_s:
            all_lat = np.concatenate(lats)
            rel = summarize(all_lat).rel_ci
            tail_rel = tail_rel_ci(all_lat, cfg.tail_quantile) if cfg.tail_quantile else 0.0
            if rel <= cfg.target_rel_ci and tail_rel <= cfg.tail_target_rel_ci:
                converged, reason = True, f"median CI within {cfg.target_rel_ci:.1%}" + (
                    f", p{cfg.tail_quantile * 100:g} CI within {cfg.tail_target_rel_ci:.1%}" if cfg.tail_quantile else "")
                break
        if elapsed >= cfg.max_time_s:
            break
        if n >= cfg.max_samples:
            reason = "sample cap"
            break
    return Sampled(
        np.concatenate(lats), {k: np.concatenate(v) for k, v in phases.items()}, converged, rounds,
        time.perf_counter() - start, 0, reason,
    )


def beside(call: Callable[[], Any], between_rounds: Callable[[], None]) -> Any:
    """Run ``call`` (a load in a foreign runtime, which releases the GIL) in a Python thread while this
    one samples memory every 0.1 s; its result, or the exception it raised (returned, not raised)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as e:  # the caller reports it as the load's error
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
        between_rounds()
    return box[0] if box else RuntimeError("the session's load ended without a result")


@dataclass
class LoadResult:
    latency_ns: np.ndarray
    calls: int
    wall_s: float
    errors: list[str]
    cpu_s: float | None = None  # CPU seconds of the watched processes over the measured window
    cpu_by_role: dict[str, float] | None = None


def closed_loop(
    session: Session, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
    between_rounds: Callable[[], None] = lambda: None, cpu: Any = None,
) -> LoadResult:
    """N callers in threads, each calling run() back to back (perf_analyzer's concurrency mode):
    a warm-up with all callers running, then every completed call's latency over duration_s.
    A session whose callers live in another runtime runs them there (``Session.run_load``)."""
    if type(session).run_load is not Session.run_load:
        mark = cpu.mark() if cpu is not None else None
        foreign = _foreign_load(session, inputs, callers, duration_s, warmup_s, between_rounds)
        if foreign is not None:
            if mark is not None:  # the window is inside the foreign runtime: its share of the whole load's CPU
                total, by_role = cpu.since(mark)
                share = duration_s / (duration_s + warmup_s)
                foreign.cpu_s, foreign.cpu_by_role = total * share, {k: v * share for k, v in by_role.items()}
            return foreign
    barrier = threading.Barrier(callers + 1)
    stop = threading.Event()
    measuring = threading.Event()
    per_thread: list[list[int]] = [[] for _ in range(callers)]
    errors: list[str] = []
    clock = time.perf_counter_ns

    def caller(i: int) -> None:
        out = per_thread[i]
        barrier.wait()
        try:
            while not stop.is_set():
                t0 = clock()
                session.run(inputs)
                dt = clock() - t0
                if measuring.is_set():
                    out.append(dt)
        except Exception as e:  # a failing call ends the load; the cell reports it
            errors.append(f"{type(e).__name__}: {e}")
            stop.set()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(warmup_s)
    mark = cpu.mark() if cpu is not None else None
    measuring.set()
    t0 = time.perf_counter()
    while not stop.wait(min(0.1, max(0.0, duration_s - (time.perf_counter() - t0)))):
        between_rounds()  # the main thread samples memory while the callers run
        if time.perf_counter() - t0 >= duration_s:
            break
    measuring.clear()
    wall = time.perf_counter() - t0
    used = cpu.since(mark) if mark is not None else (None, None)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    lat = np.array([x for lst in per_thread for x in lst], dtype=np.int64)
    return LoadResult(lat, len(lat), wall, errors, *used)


def _foreign_load(
    session: Session, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
    between_rounds: Callable[[], None],
) -> LoadResult | None:
    """The session's own threads make the calls; a Python thread waits on them (the session releases
    the GIL) while this one samples memory between rounds."""
    got = beside(lambda: session.run_load(inputs, callers, duration_s, warmup_s), between_rounds)
    if isinstance(got, BaseException):
        return LoadResult(np.empty(0, dtype=np.int64), 0, 0.0, [f"{type(got).__name__}: {got}"])
    if got is None:  # the session declined (the contract's None): Python threads calling run()
        return None
    lat = np.asarray(got.latency_ns, dtype=np.int64)
    return LoadResult(lat, len(lat), got.wall_s, [got.error] if got.error else [])
