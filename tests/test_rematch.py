"""The rematch (bench.rematch): which close leads are measured again, the paired ratio's interval,
how the decision orders and ties contenders by it, and a worker that dies mid-rematch costing only
its own figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import strategies
from bench import rematch
from bench.config import build_config
from bench.progress import Progress
from bench.record import CellResult
from bench.rematch import Group, contests, paired
from bench.results import RunDir
from bench.runner import Runner
from reports.decision import Ranked, _rank
from strategies.base import RouteTable

FACTS = RouteTable.from_json({"torch": {"languages": ["python"]}, "onnxruntime": {"languages": ["python"]},
                              "clr-onnxruntime": {"languages": ["csharp"]}, "clr-capi": {"languages": ["csharp"]},
                              "grpc": {"languages": ["any"]}})


def _rounds(ratios: dict[str, float], n: int = 10, noise: float = 0.01, seed: int = 0) -> list[dict[str, float]]:
    """n rounds of per-turn medians: a drifting machine (the same slow-down for every route in a round)
    times each route's true ratio, with a little independent noise per turn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        drift = rng.uniform(0.8, 1.3)  # far larger than the differences measured
        out.append({s: 40_000.0 * drift * r * rng.lognormal(0, noise) for s, r in ratios.items()})
    return out


def test_the_paired_ratio_sees_through_drift_and_its_interval_covers_the_truth():
    p = paired(_rounds({"a": 1.0, "b": 1.08}), "a", "b")
    assert p is not None and p.rounds == 10
    assert p.low < 1.08 < p.high and p.low > 1.0 and not p.indistinct
    same = paired(_rounds({"a": 1.0, "b": 1.0}, seed=3), "a", "b")
    assert same.indistinct and math.isclose(same.ratio, 1.0, abs_tol=0.02)
    assert paired(_rounds({"a": 1.0, "b": 1.0}, n=2), "a", "b") is None  # two rounds bound nothing
    hits = sum(paired(_rounds({"a": 1.0, "b": 1.05}, seed=s), "a", "b").low < 1.05
               < paired(_rounds({"a": 1.0, "b": 1.05}, seed=s), "a", "b").high for s in range(200))
    assert hits >= 180, hits  # a 95% interval: about 190 of 200


def _ranked(name: str, p50: float, lo: float | None = None, hi: float | None = None) -> Ranked:
    return Ranked(name, p50, None, lo, hi, None, None)


def test_the_decision_orders_contenders_by_the_side_by_side_ratio_and_ties_by_its_interval():
    # the cells put a first (drift), the rematch finds b 8% faster: b leads, a is not tied with it
    g = Group("mlp", 1, 1, "", ["a", "b"], _rounds({"a": 1.0, "b": 1 / 1.08}))
    out = _rank([_ranked("a", 0.040), _ranked("b", 0.041), _ranked("c", 0.090)], g, 0.05)
    assert [r.strategy for r in out] == ["b", "a", "c"]
    assert not out[1].tie_with_first and out[1].paired_ratio == pytest.approx(1.08, rel=0.02)
    assert out[1].paired_low > 1.0 and out[2].paired_ratio is None and not out[2].tie_with_first
    # a steady 3% lead is under the 5% margin (two processes of one route differ that much): a tie
    g = Group("mlp", 1, 1, "", ["a", "b"], _rounds({"a": 1.0, "b": 1.03}, noise=0.001))
    out = _rank([_ranked("a", 0.040), _ranked("b", 0.041)], g, 0.05)
    assert out[1].tie_with_first and out[1].paired_low > 1.0
    # ... but not with no margin: then only an interval containing 1 ties
    out = _rank([_ranked("a", 0.040), _ranked("b", 0.041)], g, 0.0)
    assert not out[1].tie_with_first
    # a rematch whose worker died for one route: that route falls back to the cells' rule
    g = Group("mlp", 1, 1, "", ["a", "b"], _rounds({"a": 1.0, "b": 1.0}), errors={"b": "died in round 2"})
    out = _rank([_ranked("a", 0.040, 0.039, 0.041), _ranked("b", 0.050, 0.049, 0.051)], g, 0.05)
    assert out[1].paired_ratio is None and not out[1].tie_with_first


def _cell(model: str, strategy: str, p50: float, lo: float, hi: float, status: str = "ok", conc: int = 1,
          scenario: str = "latency") -> CellResult:
    return CellResult.from_json({"cell": {"model": model, "strategy": strategy, "batch": 1, "threads": 1, "concurrency": conc,
                                          "malloc": "", "scenario": scenario}, "status": status,
                                 "latency": {"p50": p50, "ci_low": lo, "ci_high": hi}})


def test_only_close_leads_a_language_can_choose_between_are_measured_again():
    results = [
        _cell("mlp", "onnxruntime", 20e-6, 19.8e-6, 20.2e-6), _cell("mlp", "torch", 40e-6, 39e-6, 41e-6),
        # C#: the two routes within 3% of each other -> a rematch
        _cell("mlp", "clr-onnxruntime", 21e-6, 20.8e-6, 21.2e-6), _cell("mlp", "clr-capi", 21.6e-6, 21.4e-6, 21.8e-6),
        # a network service close to nothing it competes with; a failed cell and other scenarios never count
        _cell("mlp", "grpc", 300e-6, 290e-6, 310e-6), _cell("mlp", "wrongish", 20.1e-6, 20e-6, 20.2e-6, status="invalid"),
        _cell("mlp", "torch", 20.5e-6, 20e-6, 21e-6, conc=4), _cell("cnn", "onnxruntime", 1e-3, 0.99e-3, 1.01e-3),
        _cell("cnn", "torch", 1.3e-3, 1.2e-3, 1.4e-3, scenario="closed-loop"),
    ]
    groups = contests(results, FACTS, 0.05)
    assert [(g.model, g.strategies) for g in groups] == [("mlp", ["clr-onnxruntime", "clr-capi"])]
    # the Python caller's lead becomes close under a wider margin: its pair joins the group
    groups = contests(results, FACTS, 1.5)
    assert set(groups[0].strategies) == {"onnxruntime", "torch", "clr-onnxruntime", "clr-capi"}


def test_a_worker_that_dies_mid_rematch_loses_only_its_own_figures(tmp_path: Path):
    strategies.discover(["tests.plugins.faulty"])
    cfg = build_config({"plugins": ["tests.plugins.faulty"], "strategy": {"crash-test": {"after_s": 1.0}}},
                       {"models": ["mlp"], "strategies": ["torch", "torch-twin-test", "crash-test"], "batch_sizes": [1],
                        "sampling": {"warmup_s": 0.05}}, strategies.names())
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    runner = Runner(cfg, run, cache_dir=tmp_path / "cache", progress=Progress(1), cells=[])
    seen: list[tuple[int, int]] = []  # (round, rounds measured before it): the hook runs before each, outside turns
    [g] = rematch.run(runner, [Group("mlp", 1, 1, "", ["torch", "torch-twin-test", "crash-test"])], rounds=6, turn_s=0.1,
                      before_round=lambda group, r: seen.append((r, len(group.medians))))
    assert seen == [(r, r) for r in range(6)]
    assert "crash-test" in g.errors and "died in round" in g.errors["crash-test"], g.errors
    assert set(g.errors) == {"crash-test"}
    assert len(g.medians) == 6 and all({"torch", "torch-twin-test"} <= set(r) for r in g.medians)
    assert paired(g.medians, "torch", "torch-twin-test") is not None
    assert not list((run.path / ".work").glob("*")), list((run.path / ".work").glob("*"))  # no job files left
    rematch.write(run.path, [g], 6, 0.1)
    assert rematch.load(run.path)[("mlp", 1, 1, "")].medians == g.medians
    (run.path / rematch.FILE).write_text("{not json")
    assert rematch.load(run.path) == {}  # a broken file: no rematch, the cells' rule decides


def test_a_route_whose_rematch_failed_keeps_its_place_and_the_rounds_are_balanced():
    # b's worker died: it keeps its p50 slot between a and c rather than falling behind every rematched route
    g = Group("mlp", 1, 1, "", ["a", "b", "c"], _rounds({"a": 1.0, "c": 1.02}), errors={"b": "died in round 1"})
    out = _rank([_ranked("a", 0.0400), _ranked("b", 0.0401), _ranked("c", 0.0404)], g, 0.05)
    assert [r.strategy for r in out] == ["a", "b", "c"] and out[2].paired_ratio is not None
    # every contender goes before every other as often as after
    for n in (2, 3, 4):
        names = ["a", "b", "c", "d"][:n]
        for x, y in [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]:
            firsts = sum(rematch.turn_order(names, r).index(x) < rematch.turn_order(names, r).index(y) for r in range(12))
            assert firsts == 6, (n, x, y, firsts)


def test_each_language_keeps_its_own_contest_however_many_routes_are_close_elsewhere():
    facts = {**{f"py{i}": {"languages": ["python"]} for i in range(5)}, "cs0": {"languages": ["csharp"]},
             "cs1": {"languages": ["csharp"]}}
    results = [_cell("mlp", f"py{i}", 1e-3 * (1 + 0.01 * i), 0.99e-3, 1.06e-3) for i in range(5)]
    results += [_cell("mlp", "cs0", 2e-3, 1.99e-3, 2.01e-3), _cell("mlp", "cs1", 2.02e-3, 2.0e-3, 2.04e-3)]
    [g] = contests(results, RouteTable.from_json(facts), 0.05)
    assert {"cs0", "cs1"} <= set(g.strategies) and len([s for s in g.strategies if s.startswith("py")]) == 4
