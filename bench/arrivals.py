"""Open-loop load: requests arrive on a schedule, whatever the strategy is doing (MLPerf LoadGen's
Server scenario, perf_analyzer's request-rate mode). A slow call does not delay the next arrival;
the requests behind it queue, and each one's latency runs from its *scheduled* arrival, so a
strategy that stalls is not flattered (no coordinated omission). Requests a caller sent later
than scheduled are counted, and the largest queue is kept.

The schedule is plain data (offsets in seconds from the start, the first ``warmup_n`` of them a
warm-up at the same rate), so a session whose callers live in another runtime (C#, C++) can run
the same schedule in its own threads (``Session.run_load(..., arrivals=...)``); otherwise Python
threads serve it here.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from strategies.base import Arrays, Arrivals, Session

LATE_S = 1e-3  # a request sent more than this after its scheduled time counts as sent late
START_LEAD_S = 0.02  # the schedule starts this long after the callers are told to go
GRACE_S = 2.0  # at least this long past the schedule's end, an overloaded route's window stops


def schedule(rate: float, n: int, arrival: str = "poisson", seed: int = 0) -> np.ndarray:
    """n arrival offsets in seconds at ``rate`` per second: Poisson (exponential gaps, seeded) or
    constant. The first arrival is at 0."""
    if arrival == "constant":
        return np.arange(n, dtype=np.float64) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def plan(rate: float, min_duration_s: float, min_requests: int, max_duration_s: float, warmup_s: float,
         arrival: str = "poisson", seed: int = 0, budget_s: float = 0.0) -> Arrivals:
    """The schedule of one open-loop window: at least min_duration_s and min_requests measured
    (but no longer than max_duration_s), after warmup_s of arrivals at the same rate. With a budget,
    the load may stop early once more than 1% of the measured requests have missed it (p99 cannot
    be within the budget any more)."""
    measured_s = max(min_duration_s, min(min_requests / rate, max_duration_s))
    n = max(2, math.ceil(rate * measured_s))  # two at least: a rate needs an interval
    warmup_n = math.ceil(rate * warmup_s)
    over = int(n * 0.01) if budget_s > 0 else 0
    offsets = schedule(rate, warmup_n + n, arrival, seed)
    # a route that cannot keep up is not waited for past the schedule's end plus a grace (half the
    # window, at least 2 s): what it never sent counts as never served
    deadline = offsets[-1] + max(GRACE_S, 0.5 * measured_s)
    return Arrivals(offsets, warmup_n, int(budget_s * 1e9), over, int(deadline * 1e9))


@dataclass
class ArrivalResult:
    """Per measured request (ns, from the schedule's start): when it was scheduled, sent and done
    (done is -1 for a request not served before the load stopped); the callers; who ran them."""

    sched_ns: np.ndarray
    send_ns: np.ndarray
    done_ns: np.ndarray
    callers: int
    driver: str  # "python threads" or the session's own runtime
    stopped_early: bool = False
    error: str = ""

    @property
    def completed(self) -> np.ndarray:
        return self.done_ns >= 0

    def latency_ns(self) -> np.ndarray:
        """Every request's latency from its scheduled arrival. A request never served counts with the
        time it had waited when the load ended (a lower bound), so an overloaded route's percentiles
        are not taken over the requests it happened to serve."""
        ok = self.completed
        end = int(self.done_ns[ok].max()) if ok.any() else int(self.sched_ns[-1]) if len(self.sched_ns) else 0
        return np.where(ok, self.done_ns - self.sched_ns, np.maximum(end - self.sched_ns, 0))

    def service_ns(self) -> np.ndarray:
        """Completed requests' latency from when they were actually sent (what send-time timing sees)."""
        ok = self.completed
        return self.done_ns[ok] - self.send_ns[ok]

    def figures(self) -> dict[str, float | None]:
        n = len(self.sched_ns)
        ok = self.completed
        done = int(ok.sum())
        span = (self.sched_ns[-1] - self.sched_ns[0]) / 1e9 if n > 1 else 0.0
        offered = (n - 1) / span if span > 0 else None
        sent = self.send_ns >= 0
        if done > 1:
            served_s = (self.done_ns[ok].max() - self.sched_ns[0]) / 1e9
            achieved = done / served_s if served_s > 0 else None
        else:
            achieved = None
        late = float(np.mean((self.send_ns[sent] - self.sched_ns[sent]) > LATE_S * 1e9)) if sent.any() else None
        # queue: requests more than LATE_S past due and not yet sent, at the moment each one becomes late
        # (a request that has just arrived is not queued; unsent requests never leave the queue)
        sends = np.sort(np.where(sent, self.send_ns, np.iinfo(np.int64).max))
        late_at = self.sched_ns + int(LATE_S * 1e9)
        queue = np.searchsorted(self.sched_ns, late_at - int(LATE_S * 1e9), side="right") \
            - np.searchsorted(sends, late_at, side="right")
        queue = np.maximum(queue, 0)
        return {"offered_rps": offered, "achieved_rps": achieved, "late_fraction": late,
                "max_queue": float(queue.max()) if n else None, "completed_fraction": done / n if n else None}


def drive(session: Session, inputs: Arrays, arrivals: Arrivals, callers: int,
          between_rounds: Callable[[], None] = lambda: None) -> ArrivalResult:
    """Serve ``arrivals`` with ``callers`` threads: each takes the next request in schedule order,
    sleeps until its time, calls, and records when it sent and finished. The session's own runtime
    serves it when it implements ``run_load`` with arrivals; Python threads do otherwise."""
    if session.runs_arrivals:
        got = _foreign(session, inputs, arrivals, callers, between_rounds)
        if got is not None:
            return got
    offsets = arrivals.offsets_ns()
    total = len(offsets)
    send = np.full(total, -1, dtype=np.int64)
    done = np.full(total, -1, dtype=np.int64)
    nxt = itertools.count().__next__  # atomic under the GIL: each request is taken once, in order
    stop = threading.Event()
    errors: list[str] = []
    over = [0]
    lock = threading.Lock()
    clock = time.perf_counter_ns
    ready = threading.Barrier(callers + 1)
    start = [0]

    def caller() -> None:
        ready.wait()
        t0 = start[0]
        try:
            while not stop.is_set():
                i = nxt()
                if i >= total:
                    return
                if arrivals.deadline_ns and clock() - t0 > arrivals.deadline_ns:
                    stop.set()  # overloaded past the grace: the rest are never served
                    return
                due = t0 + offsets[i]
                wait = due - clock()
                if wait > 0:
                    time.sleep(wait / 1e9)
                s = clock()
                session.run(inputs)
                e = clock()
                send[i], done[i] = s - t0, e - t0
                if arrivals.budget_ns and i >= arrivals.warmup_n and e - due > arrivals.budget_ns:
                    with lock:
                        over[0] += 1
                        if over[0] > arrivals.max_over:
                            stop.set()  # p99 can no longer be within the budget
        except Exception as e:  # a failing call ends the load; the cell reports it
            errors.append(f"{type(e).__name__}: {e}")
            stop.set()

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    start[0] = clock() + int(START_LEAD_S * 1e9)
    ready.wait()
    end_s = offsets[-1] / 1e9 + START_LEAD_S
    t_begin = time.perf_counter()
    for t in threads:
        while t.is_alive():
            t.join(0.1)
            if time.perf_counter() - t_begin < end_s:
                between_rounds()  # memory, sampled while arrivals keep coming
    w = arrivals.warmup_n
    return ArrivalResult(offsets[w:], send[w:], done[w:], callers, "python threads", stop.is_set() and not errors,
                         errors[0] if errors else "")


def _foreign(session: Session, inputs: Arrays, arrivals: Arrivals, callers: int,
             between_rounds: Callable[[], None]) -> ArrivalResult | None:
    from bench.measure import beside

    got = beside(lambda: session.run_load(inputs, callers, 0.0, 0.0, arrivals), between_rounds)
    if got is None:
        return None
    w = arrivals.warmup_n
    offsets = arrivals.offsets_ns()
    if isinstance(got, BaseException):
        n = len(offsets) - w
        return ArrivalResult(offsets[w:], np.full(n, -1, np.int64), np.full(n, -1, np.int64), callers,
                             type(session).__name__, False, f"{type(got).__name__}: {got}")
    send, done = np.asarray(got.send_ns, dtype=np.int64), np.asarray(got.done_ns, dtype=np.int64)
    return ArrivalResult(offsets[w:], send[w:], done[w:], callers, got.driver or "the session's runtime",
                         bool(got.stopped_early), got.error)


class NullSession(Session):
    """Returns at once: the load generator's own ceiling is measured against it."""

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        return {}


def ceiling(callers: int = 4, duration_s: float = 1.0, max_late: float = 0.01, seed: int = 0) -> dict[str, float]:
    """The highest rate the Python driver schedules with under ``max_late`` of sends late, against a
    session that does nothing: doubling from 1000/s, then bisecting to within 10%."""
    null = NullSession()

    def late_at(rate: float) -> float:
        arr = plan(rate, duration_s, 200, duration_s, 0.1, "poisson", seed)
        return drive(null, {}, arr, callers).figures()["late_fraction"] or 0.0

    lo, hi, rate = 0.0, None, 1000.0
    tried: list[tuple[float, float]] = []
    while hi is None and rate <= 4e6:
        f = late_at(rate)
        tried.append((rate, f))
        if f < max_late:
            lo, rate = rate, rate * 2
        else:
            hi = rate
    while hi is not None and lo > 0 and hi / lo > 1.1:
        mid = math.sqrt(lo * hi)
        f = late_at(mid)
        tried.append((mid, f))
        lo, hi = (mid, hi) if f < max_late else (lo, mid)
    return {"ceiling_rps": lo, "callers": callers, "max_late": max_late, "tried": tried}
