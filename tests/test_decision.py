"""The decision by caller language and constraints, on a real run: routes a language cannot call are
excluded with the reason, a planted tie stays a tie, a planted slowdown ranks below, the constraints
from flags exclude with their reasons, and decision.json round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.decision import from_json, to_json
from tests.conftest import require_strategy, run_bench

BUDGET = ["--warmup", "0.05", "--min-time", "0.3", "--max-time", "0.6", "--concurrency-time", "0.2"]


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name in ("cpp-onnxruntime", "clr-onnxruntime", "clr-capi"):
        require_strategy(name)
    out = tmp_path_factory.mktemp("decision")
    cfg = out / "bench.toml"
    cfg.write_text('[strategy.slow-test]\ndelay_us = 120.0\n[decision]\ntie_within = "15%"\n')
    p = run_bench("run", "--config", str(cfg), "--plugin", "tests.plugins.faulty", "--models", "mlp",
                  "--strategies", "torch,torch-twin-test,slow-test,cpp-onnxruntime,clr-onnxruntime,clr-capi",
                  "--batch-sizes", "1", "--concurrency", "1", "--payload-sizes", "none", "--out", str(out),
                  "--run-id", "d", *BUDGET, cwd=out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / "d"


def _cell(decision: dict, caller: str) -> dict:
    block = next(b for b in decision["blocks"] if b["caller"] == caller)
    return next(c for c in block["cells"] if c["model"] == "mlp")


def test_a_csharp_caller_gets_only_the_routes_it_can_call(decided: Path):
    d = json.loads((decided / "decision.json").read_text())
    c = _cell(d, "csharp")
    # measured side by side in interleaved rounds: ranked by the paired ratio to the first, never below 1
    assert all(r["paired_ratio"] >= 1.0 for r in c["eligible"][1:]), c["eligible"]
    assert {r["strategy"] for r in c["eligible"]} == {"clr-onnxruntime", "clr-capi"}
    reasons = {e["strategy"]: e["reason"] for e in c["excluded"]}
    assert reasons["torch"] == "a Python route; a C# application cannot call it"
    assert reasons["cpp-onnxruntime"] == "a C++ route; a C# application cannot call it"
    assert reasons["clr-embed"] == "not measured in this run"
    md = (decided / "report.md").read_text()
    assert "## Decision by caller language" in md
    glance = md[md.index("**At a glance"):]
    header, _, row = glance.splitlines()[2:5]
    assert header.split(" | ")[-3:] == ["Python", "C#", "C++ |"], header
    assert row.split(" | ")[-2].startswith("clr-onnxruntime "), row  # the C# column names a C# route
    # one scorecard per model; crossovers say what this run could not show
    assert "## Scorecard" in md and "**mlp, batch 1, 1 thread**" in md
    assert "Payload: not measured in this run" in md
    # a claim whose cells were not in the run says so
    assert "| A gRPC microservice's communication overhead \"can become significant\" | not measured in this run" in md


def test_a_planted_tie_is_a_tie_and_a_planted_slowdown_ranks_below(decided: Path):
    c = _cell(json.loads((decided / "decision.json").read_text()), "python")
    order = [r["strategy"] for r in c["eligible"]]
    assert set(order[:2]) == {"torch", "torch-twin-test"} and order[2] == "slow-test", order
    assert sorted(c["ties"]) == ["torch", "torch-twin-test"]
    slow = next(r for r in c["eligible"] if r["strategy"] == "slow-test")
    assert not slow["tie_with_first"] and slow["p50_ms"] > c["eligible"][0]["p50_ms"]  # mechanics, not a speed: the machine moves those
    assert "tie between" in (decided / "report.md").read_text()
    # the twins were measured side by side in the run's 12 interleaved rounds, and, being close, in the rematch's 10 more
    second = c["eligible"][1]
    assert second["paired_rounds"] == 12 + 10 and second["paired_low"] <= second["paired_ratio"] <= second["paired_high"]
    assert second["tie_margin"] >= 0.15  # the spread between processes, at least the tie_within the reviewer set
    assert "side by side" in (decided / "report.md").read_text()


def test_constraints_from_flags_exclude_with_reasons_and_the_json_round_trips(decided: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "d"
    shutil.copytree(decided, run)  # re-deciding rewrites decision.json and the report: not the shared run's
    p = run_bench("report", str(run), "--caller", "csharp", "--python-at-deployment", "no", "--p99-budget", "10ms", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads((run / "decision.json").read_text())
    assert [b["caller"] for b in d["blocks"]] == ["csharp"]
    c = _cell(d, "csharp")
    assert [r["strategy"] for r in c["eligible"]] == ["clr-onnxruntime"]
    assert {"strategy": "clr-capi", "reason": "needs Python at deployment"} in c["excluded"]
    blocks, constraints, crossings = from_json(d)
    assert to_json(blocks, constraints, crossings) == d
    assert constraints.python_at_deployment is False and constraints.p99_budget_ms == 10.0
    assert constraints.tie_within == 0.15  # the run's own [decision] stays under the flags


@pytest.mark.parametrize("flag,value,message", [
    ("--caller", "java", "caller must be one of python, csharp, cpp or any"),
    ("--p99-budget", "ten", "is not a value like"),
    ("--memory-budget", "5 parsecs", "is not a value like"),
    ("--python-at-deployment", "maybe", "python_at_deployment must be yes or no"),
    ("--tie-within", "abc", "tie_within must be a fraction"),
])
def test_a_wrong_constraint_is_one_line_and_exit_2(decided: Path, flag: str, value: str, message: str, tmp_path: Path):
    import shutil

    run = tmp_path / "d"
    shutil.copytree(decided, run)
    p = run_bench("report", str(run), flag, value, cwd=tmp_path)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
