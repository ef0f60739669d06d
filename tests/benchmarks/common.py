"""Shared by the benchmarks: time a call, and compare two calls side by side in alternating rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def median_call_s(fn: Callable[[], object], seconds: float) -> float:
    """Median of individual calls over about ``seconds`` (after five warm-up calls, at least 20 calls)."""
    for _ in range(5):
        fn()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)) / 1e9


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Each call's median time per round, all calls measured in every round so drift on a shared
    machine affects them alike; compare them by per-round ratios and summarise with the median."""
    return rotating({n: (lambda fn=fn: median_call_s(fn, seconds)) for n, fn in calls.items()}, rounds)


def rotating(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every measurement once per round and keep what each returns (a median time, say).

    The order rotates from round to round (a b c, b c a, c a b, ...): whichever runs right after a
    switch between two servers or code paths can be systematically slower or faster, and a fixed
    order would put that bias into every ratio. A multiple of len(measures) rounds balances it exactly."""
    names = list(measures)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in names[i % len(names):] + names[:i % len(names)]:
            out[n].append(measures[n]())
    return out


def ratios(times: dict[str, list[float]], name: str, reference: str) -> list[float]:
    return [x / y for x, y in zip(times[name], times[reference])]


def paired(a: Callable[[], object], b: Callable[[], object], rounds: int, seconds: float) -> tuple[float, float, list[float]]:
    """(median of a, median of b, per-round ratios a/b): ``interleaved`` for two calls."""
    t = interleaved({"a": a, "b": b}, rounds, seconds)
    return statistics.median(t["a"]), statistics.median(t["b"]), ratios(t, "a", "b")
