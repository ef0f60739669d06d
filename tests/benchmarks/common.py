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


def paired(a: Callable[[], object], b: Callable[[], object], rounds: int, seconds: float) -> tuple[float, float, list[float]]:
    """(median of a, median of b, per-round ratios a/b), a and b measured back to back each round
    so drift on a shared machine affects both alike; summarise with the median ratio."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(median_call_s(a, seconds))
        theirs.append(median_call_s(b, seconds))
    return statistics.median(ours), statistics.median(theirs), [x / y for x, y in zip(ours, theirs)]
