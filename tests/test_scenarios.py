"""Scenarios: the open-loop generator's arrival statistics, latency from the schedule catching a
stall that send-time latency hides, the slo search finding a known capacity, a plug-in scenario
needing no edit elsewhere, the routes' own open-loop drivers, and results from before scenarios."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench import arrivals
from bench.scenarios.slo import search
from strategies.base import Arrays, Session
from tests.conftest import run_bench

FAST = ["--warmup", "0.05", "--min-time", "0.1", "--max-time", "0.3", "--concurrency-time", "0.3"]


def test_poisson_schedule_has_the_rate_and_exponential_gaps():
    rate, n = 500.0, 20_000
    gaps = np.diff(arrivals.schedule(rate, n, "poisson", seed=3))
    assert abs(gaps.mean() * rate - 1) < 0.03
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # an exponential's coefficient of variation is 1
    assert stats.kstest(gaps * rate, "expon").pvalue > 0.01
    const = np.diff(arrivals.schedule(rate, 100, "constant"))
    assert np.allclose(const, 1 / rate)


def test_plan_measures_at_least_the_minimums_after_a_warmup():
    p = arrivals.plan(100.0, 2.0, 600, 10.0, 0.5)  # 600 requests at 100/s: 6 s (within the 10 s cap)
    assert p.warmup_n == 50 and len(p.offsets_s) - p.warmup_n == 600
    p = arrivals.plan(10.0, 2.0, 600, 10.0, 0.0)  # capped at 10 s: 100 requests
    assert len(p.offsets_s) == 100


def test_driver_achieves_the_offered_rate_on_a_session_that_does_nothing():
    res = arrivals.drive(arrivals.NullSession(), {}, arrivals.plan(2000.0, 1.0, 200, 1.0, 0.1, seed=1), callers=4)
    f = res.figures()
    assert f["completed_fraction"] == 1.0
    assert abs(f["achieved_rps"] / f["offered_rps"] - 1) < 0.05, f
    assert f["late_fraction"] < 0.05, f


class _StallsOnce(Session):
    """0.5 ms a call, one call of 200 ms (a garbage collection, a page-in)."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        import time

        self.calls += 1
        time.sleep(0.2 if self.calls == 400 else 0.0005)
        return {}


def test_latency_from_the_schedule_catches_a_stall_that_send_time_latency_hides():
    res = arrivals.drive(_StallsOnce(), {}, arrivals.plan(400.0, 2.0, 800, 5.0, 0.1, "constant"), callers=1)
    from_arrival = np.percentile(res.latency_ns(), 99) / 1e6
    from_send = np.percentile(res.service_ns(), 99) / 1e6
    # 80 requests arrive during the stall and wait behind it: >1% of 800, so the p99 from arrival shows it
    assert from_arrival > 50, from_arrival
    # timed from when each was sent (what a closed loop measures), only the one slow call is slow
    assert from_send < 10, from_send
    assert res.figures()["late_fraction"] > 0.05
    assert res.figures()["max_queue"] >= 50


def test_search_brackets_a_known_threshold():
    calls = []

    def window(rate: float):
        calls.append(rate)
        return rate <= 337.0, {}

    found = search(window, 50.0, 0.05, 30, 1.0, 1e5)
    assert found["max_rps"] <= 337 < found["failed_at"]
    assert found["failed_at"] / found["max_rps"] <= 1.05
    assert found["steps"][0]["rate"] == 50.0


def _summary(run: Path) -> list[dict[str, str]]:
    with open(run / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_slo_finds_the_capacity_of_a_fixed_service_time(tmp_path: Path):
    """One request at a time, 5 ms each: 200/s at most. Constant arrivals: below capacity every request
    takes 5 ms; above it the queue grows for the whole window and p99 leaves any budget."""
    cfg = tmp_path / "slo.toml"
    cfg.write_text('plugins = ["tests.plugins.service"]\n[strategy.fixed-service-test]\nservice_ms = 5.0\n'
                   '[slo]\nprecision = 0.05\nmin_duration_s = 1.5\nmin_requests = 300\narrival = "constant"\n')
    p = run_bench("run", "--config", str(cfg), "--models", "mlp", "--strategies", "fixed-service-test", "--batch-sizes", "1",
                  "--concurrency", "1", "--scenarios", "latency,slo", "--slo-p99", "25ms", "--out", str(tmp_path), "--run-id", "slo",
                  "--no-history", *FAST, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    row = next(r for r in _summary(tmp_path / "slo") if r["scenario"] == "slo")
    found = float(row["max_rps_within_slo"])
    cell = json.loads(next((tmp_path / "slo" / "cells").glob("*slo.json")).read_text())
    capacity = 1.0 / (5.0e-3)
    assert 0.9 * capacity <= found <= 1.1 * capacity, (found, cell["scenario_detail"]["steps"])
    assert cell["scenario_detail"]["failed_at"] > found
    assert float(row["cpu_ms_per_inference"]) < 5.0  # it sleeps: little CPU per request
    report = (tmp_path / "slo" / "report.md").read_text()
    assert "The highest request rate within a p99 of 25 ms" in report and "fixed-service-test" in report
    assert "within p99 25ms" in p.stderr
    # the decision takes the answer: a required rate it holds keeps the route, one it does not rules it out
    for need, eligible in ((0.5 * found, True), (2 * capacity, False)):
        r = run_bench("report", str(tmp_path / "slo"), "--caller", "python", "--required-rate", f"{need:.0f}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        cell = json.loads((tmp_path / "slo" / "decision.json").read_text())["blocks"][0]["cells"][0]
        names = [e["strategy"] for e in cell["eligible"]]
        assert ("fixed-service-test" in names) is eligible, cell
        if not eligible:
            why = dict((e["strategy"], e["reason"]) for e in cell["excluded"])["fixed-service-test"]
            assert why.startswith(f"holds {found:,.0f}/s within p99 25 ms, under the {need:,.0f}/s required"), why


def test_a_plugin_scenario_needs_no_edit_elsewhere(tmp_path: Path):
    p = run_bench("run", "--plugin", "tests.plugins.scenario_plugin", "--models", "mlp", "--strategies", "torch",
                  "--batch-sizes", "1", "--concurrency", "1", "--payload-sizes", "none", "--scenarios",
                  "latency,fixed-calls-test", "--fixed-calls", "40", "--out", str(tmp_path), "--run-id", "a",
                  "--no-history", *FAST, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["scenario"]: r for r in _summary(tmp_path / "a")}
    assert set(rows) == {"latency", "fixed-calls-test"}
    assert float(rows["fixed-calls-test"]["fixed_calls_done"]) == 40
    assert rows["fixed-calls-test"]["cell_id"] == "mlp/torch/b1/t1/c1/fixed-calls-test@n40"
    assert "Fixed calls (a plug-in scenario)" in (tmp_path / "a" / "report.md").read_text()
    assert "40 fixed calls" in p.stderr
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    c = run_bench("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "cmp.json"), cwd=tmp_path)
    assert c.returncode == 0, c.stdout + c.stderr
    metrics = {(ch["cell_id"], ch["metric"]) for ch in json.loads((tmp_path / "cmp.json").read_text())["changes"]}
    assert ("mlp/torch/b1/t1/c1/fixed-calls-test@n40", "calls done") in metrics


@pytest.mark.parametrize("args, expect", [
    (["--scenarios", "latency,warp"], "unknown scenario 'warp'"),
    (["--scenarios", "open-loop", "--rates", "fast"], "is not a comma-separated list of request rates"),
    (["--scenarios", "open-loop", "--rates", "0"], "must be a positive number"),
    (["--scenarios", "latency", "--slo-p99", "10ms"], "--slo-p99 applies to the slo scenario"),
    (["--scenarios", "slo"], "needs a p99 budget"),
    (["--scenarios", "slo", "--slo-p99", "soon"], "--slo-p99"),
    (["--scenarios", "open-loop", "--arrival", "bursty"], "must be one of poisson, constant"),
])
def test_bad_scenario_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expect: str):
    p = run_bench("run", "--models", "mlp", "--strategies", "torch", "--out", str(tmp_path), *args, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], p.stderr
    assert not list(tmp_path.glob("*/run.json"))


OWN_DRIVERS = ["torch", "cpp-onnxruntime", "clr-onnxruntime", "clr-capi", "clr-grpc", "clr-embed", "grpc"]


def test_routes_serve_open_loop_arrivals_in_their_own_runtime(tmp_path: Path):
    """Every route with callers in another runtime serves the schedule there (C++ and C# threads); the
    others in Python threads; every cell correct, its figures present."""
    p = run_bench("run", "--models", "mlp", "--strategies", ",".join(OWN_DRIVERS), "--batch-sizes", "1", "--concurrency", "1",
                  "--scenarios", "open-loop", "--rates", "300", "--open-loop-callers", "2", "--out", str(tmp_path),
                  "--run-id", "o", "--no-history", "--strict", *FAST, cwd=tmp_path, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = {json.loads(f.read_text())["cell"]["strategy"]: json.loads(f.read_text()) for f in (tmp_path / "o" / "cells").glob("*.json")}
    assert set(cells) == set(OWN_DRIVERS)
    drivers = {s: c["scenario_detail"]["driver"] for s, c in cells.items()}
    assert drivers["cpp-onnxruntime"] == "C++ threads"
    for s in ("clr-onnxruntime", "clr-capi", "clr-grpc", "clr-embed"):
        assert drivers[s].startswith("C# threads"), drivers
    assert drivers["torch"] == drivers["grpc"] == "python threads"
    for s, c in cells.items():
        f = c["figures"]
        assert 0.7 < f["achieved_rps"] / 300 < 1.3, (s, f)
        assert c["cpu"]["s_per_inference"] > 0, s
        assert c["scenario_detail"]["requests"] >= 200


def test_results_from_before_scenarios_still_render_and_compare(tmp_path: Path):
    p = run_bench("run", "--models", "mlp", "--strategies", "torch", "--batch-sizes", "1", "--concurrency", "1,2",
                  "--payload-sizes", "1KiB", "--out", str(tmp_path), "--run-id", "new", "--no-history", *FAST,
                  cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    meta = json.loads((old / "run.json").read_text())
    for k in ("scenarios", "scenario_options"):
        meta["config"].pop(k)
    for c in meta["cells"]:
        c.pop("scenario"), c.pop("point")
    (old / "run.json").write_text(json.dumps(meta))
    for f in (old / "cells").glob("*.json"):
        r = json.loads(f.read_text())
        r["cell"].pop("scenario"), r["cell"].pop("point")
        for k in ("cpu", "measure_s"):
            r.pop(k, None)
        f.write_text(json.dumps(r))
    (old / "report.md").unlink()
    r = run_bench("report", str(old), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Marshaling cost: payload sweep" in (old / "report.md").read_text()
    c = run_bench("compare", str(old), str(tmp_path / "new"), "--json", str(tmp_path / "c.json"), cwd=tmp_path)
    assert c.returncode == 0, c.stdout + c.stderr
    ids = {ch["cell_id"] for ch in json.loads((tmp_path / "c.json").read_text())["changes"]}
    assert ids == {"mlp/torch/b1/t1/c1", "mlp/torch/b1/t1/c2", "identity/torch/b1/t1/c1"}
    rows = {r["cell_id"]: r["scenario"] for r in _summary(tmp_path / "new")}
    assert rows == {"mlp/torch/b1/t1/c1": "latency", "mlp/torch/b1/t1/c2": "closed-loop", "identity/torch/b1/t1/c1": "payload"}


def test_an_idle_route_has_no_queue():
    res = arrivals.drive(arrivals.NullSession(), {}, arrivals.plan(100.0, 1.0, 100, 1.0, 0.0, "constant"), callers=2)
    f = res.figures()
    # a request that has just arrived is not queued: only one sent over 1 ms late (a busy machine) is
    assert f["max_queue"] == 0 or f["late_fraction"] > 0, f


class _OneAtATime(Session):
    """5 ms a call, one call at a time: 200/s at most."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        import time

        with self.lock:
            time.sleep(0.005)
        return {}


def test_an_overloaded_route_is_not_waited_for_past_the_grace():
    """2,000/s against a 200/s route for 1 s: the driver stops sending 2 s after the schedule ends
    (not after the 10 s the backlog would take); what was never sent counts, with the time it had
    waited, so the percentiles are not taken over the lucky few."""
    import time

    plan = arrivals.plan(2000.0, 1.0, 100, 1.0, 0.0)
    t0 = time.monotonic()
    res = arrivals.drive(_OneAtATime(), {}, plan, callers=4)
    assert time.monotonic() - t0 < 5
    f = res.figures()
    assert res.stopped_early and f["completed_fraction"] < 0.5, f
    lat = res.latency_ns()
    assert len(lat) == len(res.sched_ns)  # every request, served or not
    assert np.percentile(lat, 99) > 1.5e9  # the unserved ones waited seconds by the end


def test_a_plugin_s_scenario_table_is_known_in_its_config_file(tmp_path: Path):
    from bench.config import load_config_file

    cfg = tmp_path / "c.toml"
    cfg.write_text('plugins = ["tests.plugins.scenario_plugin"]\n[fixed_calls_test]\ncalls = 7\n')
    assert load_config_file(cfg)["fixed_calls_test"] == {"calls": 7}


def test_a_required_rate_rules_out_a_capped_search_below_it():
    import pandas as pd

    from reports.decision import Capacity, Constraints, decide
    from strategies.base import RouteTable

    df = pd.DataFrame([{"model": "mlp", "batch": 1, "threads": 1, "malloc": "", "concurrency": 1, "strategy": s,
                        "p50_ms": p, "p99_ms": p * 2, "max_ms": p * 3, "samples": 1000, "ci_low_ms": p, "ci_high_ms": p,
                        "throughput_sps": 1e3 / p, "mem_added_mb": 10.0, "valid": True, "status": "ok", "error": ""}
                       for s, p in (("a", 0.1), ("b", 0.2), ("c", 0.3))])
    facts = {s: {"languages": ["python"], "python_at_deployment": True} for s in "abc"}
    capacity = {("mlp", 1, 1, "", "a"): Capacity(5000.0, 10.0, capped=True),  # every rate up to 5k passed
                ("mlp", 1, 1, "", "b"): Capacity(20000.0, 10.0),
                ("mlp", 1, 1, "", "c"): Capacity(900.0, 10.0)}
    cell = decide(df, RouteTable.from_json(facts), Constraints(caller="python", required_rate_rps=8000),
                  capacity=capacity)[0].cells[0]
    assert [r.strategy for r in cell.eligible] == ["b"]
    why = dict(cell.excluded)
    assert why["a"].startswith("held every rate tried within p99 10 ms, up to 5,000/s (the search's cap); 8,000/s was not tested")
    assert why["c"] == "holds 900/s within p99 10 ms, under the 8,000/s required"
