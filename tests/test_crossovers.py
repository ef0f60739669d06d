"""Crossovers checked on synthetic cost lines with known answers: the payload size where a fixed cost
falls under 10% of a call, and the batch size and caller count where the leader changes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.stats import CostFit, fit_cost
from reports.crossovers import from_json, payload_crossover, ranking_switches, switches, to_json
from strategies.base import RouteTable


def test_the_payload_crossover_is_where_the_fixed_cost_is_a_tenth_of_the_call():
    # 10 µs + 1 ns/B: the fixed cost is 10% of the call at 9 x 10 µs / 1 ns = 90,000 bytes
    p = payload_crossover(CostFit(10e-6, 1e9, 1.0, 6), "x", measured_max_bytes=64 * 2**20)
    assert p.bytes == pytest.approx(90_000) and p.inside_measured
    share = p.fixed_s / (p.fixed_s + p.per_byte_s * p.bytes)
    assert share == pytest.approx(0.10)
    # the same answer from points on that line, through the fit the report uses
    sizes = np.array([1024, 16384, 262144, 2**20, 16 * 2**20], dtype=float)
    fitted = payload_crossover(fit_cost(sizes, 10e-6 + sizes * 1e-9), "x")
    assert fitted.bytes == pytest.approx(90_000, rel=0.01)
    # no per-byte cost (in-process, zero copy): the fixed cost never stops mattering
    assert payload_crossover(CostFit(3e-6, math.inf, 1.0, 6), "torch").bytes is None
    # beyond the largest payload measured: said so
    assert not payload_crossover(CostFit(1e-3, 1e9, 1.0, 6), "slow", measured_max_bytes=2**20).inside_measured


def test_the_batch_where_the_leader_changes_is_where_the_lines_cross():
    batches = [1, 8, 16, 32, 64]
    a = {b: 10 + 1.0 * b for b in batches}  # cheap fixed cost, dear per sample
    b = {x: 20 + 0.5 * x for x in batches}  # the other way round: the lines cross at batch 20
    [(x0, x1, before, after, at, close)] = switches({"a": a, "b": b})
    assert (x0, x1, before, after) == (16, 32, "a", "b") and at == pytest.approx(20.0) and not close
    # one line always below the other: no crossover
    assert switches({"a": a, "c": {x: 5 + 0.5 * x for x in batches}}) == []


def test_the_caller_count_where_throughput_leadership_changes():
    a = {1: 100.0, 2: 150.0, 4: 160.0}
    b = {1: 80.0, 2: 170.0, 4: 300.0}
    [(x0, x1, before, after, at, close)] = switches({"a": a, "b": b}, higher_is_better=True)
    assert (x0, x1, before, after) == (1, 2, "a", "b") and at == pytest.approx(1.5)
    # a 2% lead on one side is flagged as possibly noise
    [(*_, close)] = switches({"a": {1: 100.0, 2: 100.0}, "b": {1: 98.0, 2: 150.0}}, higher_is_better=True)
    assert close
    # the leader at 1 caller was not measured at 4 (it does not allow concurrent calls): it did not lose there
    assert switches({"a": {1: 100.0}, "b": {1: 80.0, 4: 300.0}, "c": {1: 50.0, 4: 200.0}}, higher_is_better=True) == []


def _row(strategy: str, batch: int, p50_ms: float, conc: int = 1, sps: float | None = None, valid: bool = True) -> dict:
    return {"model": "m", "strategy": strategy, "batch": batch, "threads": 1, "concurrency": conc, "malloc": "",
            "scenario": "latency" if conc == 1 else "closed-loop", "valid": valid, "p50_ms": p50_ms,
            "throughput_sps": sps if sps is not None else batch / p50_ms * 1e3}


def test_ranking_switches_are_per_caller_language_and_ignore_failed_cells():
    facts = {"py-a": {"languages": ["python"]}, "py-b": {"languages": ["python"]}, "cs-a": {"languages": ["csharp"]},
             "svc": {"languages": ["any"]}}
    rows = []
    for bt in (1, 8, 64):
        rows += [_row("py-a", bt, 0.010 + 0.001 * bt), _row("py-b", bt, 0.020 + 0.0005 * bt),
                 _row("cs-a", bt, 0.005 + 0.002 * bt), _row("svc", bt, 1.0 + 0.001 * bt)]
    rows.append(_row("py-b", 1, 0.001, valid=False))  # wrong outputs never lead
    found = ranking_switches(pd.DataFrame(rows), RouteTable.from_json(facts), 0.05)
    py = [s for s in found if s.caller == "python"]
    assert [(s.axis, s.before, s.after, s.x_before, s.x_after) for s in py] == [("batch", "py-a", "py-b", 8, 64)]
    assert py[0].at == pytest.approx(20.0)
    assert "py-a is fastest up to batch 8, py-b from batch 64" in py[0].text()
    # C# has one route of its own and the service, which never leads: nothing changes
    assert not [s for s in found if s.caller == "csharp"]
    assert from_json(to_json([], found))[1] == found
