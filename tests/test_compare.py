"""Regression tracking on real runs: a planted slowdown is flagged, an identical rerun is not; the CI
gate; shards merged give the matrix of one run; exports read back by pytest-benchmark itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.results import RunDir
from tests.conftest import GATE_THRESHOLDS, bench_env, run_bench


def test_planted_slowdown_is_flagged_and_fails_the_gate(runs: Path):
    rc, *out = (runs / "gate.txt").read_text().split("\n", 1)
    assert rc == "1", out  # --baseline: exit 1 on a regression
    cmp = json.loads((runs / "slow" / "compare.json").read_text())
    flagged = {(c["cell_id"], c["metric"]) for c in cmp["changes"] if c["verdict"] == "regression"}
    assert ("mlp/slow-test/b1/t1/c1", "latency p50") in flagged
    assert ("mlp/slow-test/b1/t1/c2", "throughput") in flagged
    # the untouched strategy at one caller; two callers on two shared cores feel any neighbour (the
    # false-alarm rate per kind of cell is measured by tests/benchmarks/compare_false_alarms.py)
    assert ("mlp/torch/b1/t1/c1", "latency p50") not in flagged, flagged
    slow = next(c for c in cmp["changes"] if c["cell_id"] == "mlp/slow-test/b1/t1/c1")
    assert slow["ratio"] > 1.5 and slow["ci_low"] > 1.1 and slow["p_value"] < 1e-6
    assert "REGRESSIONS" in out[0] and "mlp/slow-test/b1/t1/c1" in out[0]
    # the gate measured the flagged cells again, every attempt, before failing, and kept each measurement
    cells = runs / "slow" / "cells"
    assert "re-measuring" in out[0] and "attempt 3 of 3" in out[0]
    for bak in ("unconfirmed", "unconfirmed-2", "unconfirmed-3"):
        assert (cells / f"mlp__slow-test__b1__t1__c1.{bak}.json.bak").exists(), bak


def test_identical_rerun_passes_the_gate(runs: Path, tmp_path: Path):
    # a single measurement of an unchanged cell can land in a slow period of the shared machine and
    # be flagged (README: false alarms); the gate measures such cells again and must then pass
    rc, *out = (runs / "gate-rerun.txt").read_text().split("\n", 1)
    assert rc == "0", out
    p = run_bench("compare", str(runs / "base"), str(runs / "rerun"), *GATE_THRESHOLDS, "--json", str(tmp_path / "c.json"),
                  cwd=tmp_path)
    cmp = json.loads((tmp_path / "c.json").read_text())
    assert p.returncode == 0, p.stdout
    assert len(cmp["changes"]) == 6  # 4 latencies, 2 throughputs
    assert not [c for c in cmp["changes"] if c["verdict"] == "regression"]


def test_compare_by_run_id_and_direction(runs: Path, tmp_path: Path):
    # the other way round, the planted slowdown reads as an improvement, for latency and throughput
    p = run_bench("compare", "slow", "base", "--out", str(runs), "--json", str(tmp_path / "c.json"), cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr
    verdicts = {(c["cell_id"], c["metric"]): c["verdict"] for c in json.loads((tmp_path / "c.json").read_text())["changes"]}
    assert verdicts[("mlp/slow-test/b1/t1/c1", "latency p50")] == "improvement"
    assert verdicts[("mlp/slow-test/b1/t1/c2", "throughput")] == "improvement"
    assert "improvements (" in p.stdout


@pytest.mark.parametrize("args, fragment", [
    (["compare", "nope", "base"], "no results folder at 'nope'"),
    (["compare", "base", "branch:never-made"], "no complete run on branch 'never-made'"),
    (["compare", "base", "rerun", "--threshold", "ten"], "not a fraction or percentage"),
    (["compare", "base", "rerun", "--alpha", "2"], "--alpha must be between 0 and 1"),
    (["run", "--baseline", "nope", "--models", "mlp"], "no results folder at 'nope'"),
])
def test_bad_compare_input_exits_2(runs: Path, tmp_path: Path, args: list[str], fragment: str):
    p = run_bench(*args, "--out", str(runs), cwd=tmp_path)
    assert p.returncode == 2 and fragment in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_shards_merged_give_the_cells_of_one_run(tmp_path: Path):
    common = ["--models", "mlp", "--strategies", "torch,onnxruntime", "--batch-sizes", "1,2", "--concurrency", "1",
              "--payload-sizes", "1KiB", "--warmup", "0.02", "--min-time", "0.05", "--max-time", "0.1",
              "--no-report", "--out", str(tmp_path)]
    for shard in ("1/2", "2/2"):
        p = run_bench("run", *common, "--shard", shard, "--run-id", f"s{shard[0]}", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    p = run_bench("run", *common, "--run-id", "whole", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    shard_ids = [{r.id for r in RunDir(tmp_path / s).load_cells(samples=False)} for s in ("s1", "s2")]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]
    p = run_bench("merge", str(tmp_path / "merged"), "s1", "s2", "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    merged, whole = RunDir(tmp_path / "merged"), RunDir(tmp_path / "whole")
    assert {r.id for r in merged.load_cells()} == {r.id for r in whole.load_cells()}
    assert merged.meta()["cells"] == whole.meta()["cells"] and merged.meta()["status"] == "complete"
    assert (tmp_path / "merged" / "report.html").exists() and len(merged.meta()["merged_from"]) == 2
    # a missing shard is said, not hidden; overlapping shards are refused
    p = run_bench("merge", str(tmp_path / "half"), "s1", "--out", str(tmp_path), "--no-report", cwd=tmp_path)
    assert p.returncode == 0 and "cells are in no shard" in p.stderr and RunDir(tmp_path / "half").meta()["status"] == "partial"
    p = run_bench("merge", str(tmp_path / "twice"), "s1", "s1", "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "shards overlap" in p.stderr
    p = run_bench("run", *common, "--shard", "3/2", cwd=tmp_path)
    assert p.returncode == 2 and "i must be between 1 and n" in p.stderr


def test_exports_read_back_by_pytest_benchmark(runs: Path, tmp_path: Path):
    pb, gh = tmp_path / "0001_base.json", tmp_path / "gh.json"
    p = run_bench("export", "base", "--out", str(runs), "--pytest-benchmark", str(pb), "--github-action", str(gh),
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    entries = json.loads(gh.read_text())
    assert {e["name"] for e in entries} >= {"mlp/torch/b1/t1/c1 p50", "mlp/slow-test/b1/t1/c2 p50"}
    assert all(e["unit"] == "us" and e["value"] > 0 for e in entries)
    # pytest-benchmark's own compare command reads the file
    p = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(pb), "--columns", "min,median,max"],
                       cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "mlp/torch/b1/t1/c1" in p.stdout and "median" in p.stdout.lower()


def test_pytest_benchmark_suite_compares_with_its_own_gate(tmp_path: Path):
    """The pytest-benchmark suite saves a run and a second run compares against it with
    --benchmark-compare-fail, the way its users gate merges."""
    suite = Path(__file__).parent / "pytest_benchmarks" / "bench_strategies.py"
    ids = [f"{suite}::test_batch1_latency[{s}-mlp]" for s in ("torch", "onnxruntime")]
    common = [sys.executable, "-m", "pytest", *ids, "-q", "-p", "no:cacheprovider",
              f"--benchmark-storage=file://{tmp_path / 'storage'}"]
    p = subprocess.run([*common, "--benchmark-autosave"], cwd=tmp_path, env=bench_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 passed" in p.stdout and list((tmp_path / "storage").rglob("0001_*.json"))
    p = subprocess.run([*common, "--benchmark-compare", "--benchmark-compare-fail=median:1000%"], cwd=tmp_path,
                       env=bench_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "0001" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]


def test_runs_from_different_machines_or_versions_are_warned_about(runs: Path, tmp_path: Path):
    from bench.compare import environment_warnings

    env = RunDir(runs / "base").meta()["environment"]
    assert environment_warnings(env, env) == []
    other = json.loads(json.dumps(env))
    other["cpu_model"] = "Some Other CPU"
    other["packages"]["torch"] = "9.9.9"
    other["strategy_runtimes"]["torch"]["torch"] = "9.9.9"
    warnings = environment_warnings(env, other)
    assert any(w.startswith("different cpu_model:") and "Some Other CPU" in w for w in warnings)
    assert any(w.startswith("different torch:") and w.endswith("-> 9.9.9") for w in warnings)
    assert len([w for w in warnings if "torch" in w]) == 1  # said once, not again per strategy
    # and the command says so before its table
    shutil.copytree(runs / "base", tmp_path / "elsewhere")
    meta = json.loads((tmp_path / "elsewhere" / "run.json").read_text())
    meta["environment"] = other
    assert meta["config"]["malloc"] == ["default"]
    meta["config"]["malloc"] = ["steady"]
    (tmp_path / "elsewhere" / "run.json").write_text(json.dumps(meta))
    p = run_bench("compare", str(runs / "base"), str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert "warning: different cpu_model" in p.stdout and p.returncode == 0, p.stdout + p.stderr
    assert "warning: different allocator policy (--malloc): default -> steady" in p.stdout


def test_a_one_policy_run_compares_with_the_same_policys_cells_of_a_multi_policy_run():
    """Ids of a run that compared allocators end in the policy; a run under one policy compares with
    those cells of it, not with nothing."""
    from bench.compare import _keyed, compare_cells
    from bench.record import CellResult

    def cell(cid: str, malloc: str, shift: float) -> CellResult:
        model, strategy = cid.split("/")[:2]
        samples = (np.arange(200) % 7 + 100 + shift).tolist()
        return CellResult.from_json({"cell": {"id": cid, "model": model, "strategy": strategy, "batch": 1, "threads": 1,
                                              "concurrency": 1, "malloc": malloc}, "status": "ok", "samples_ns": samples})

    single = [cell("mlp/torch/b1/t1/c1", "", 0)]
    multi = [cell("mlp/torch/b1/t1/c1/default", "default", 0), cell("mlp/torch/b1/t1/c1/jemalloc", "jemalloc", 50)]
    changes, only_base, only_new = compare_cells(_keyed(single, ["default"], True), _keyed(multi, ["default", "jemalloc"], True))
    assert [c.cell_id for c in changes] == ["mlp/torch/b1/t1/c1/default"] and changes[0].verdict == "unchanged"
    assert only_base == [] and only_new == ["mlp/torch/b1/t1/c1/jemalloc"]
    assert _keyed(single, ["default"], False) == single  # two one-policy runs keep their ids


def test_each_part_of_a_cell_is_judged_apart():
    """A cell's parts (length buckets) are compared as rows of their own: a bucket that slowed is flagged
    under its own id, beside its cell and the bucket that did not; allocator keying names the bucket too."""
    from bench.compare import _keyed, compare_cells
    from bench.record import CellResult
    from bench.stats import summarize

    def shapes(slow_bucket: float) -> CellResult:
        rng = np.random.default_rng(1)
        base = (100_000 + rng.integers(0, 500, 300)).tolist()
        buckets = {"seq16": base, "seq64": [int(x * slow_bucket) for x in base]}
        return CellResult.from_json({
            "cell": {"model": "transformer", "strategy": "torch", "batch": 1, "threads": 1, "concurrency": 1,
                     "scenario": "shapes", "point": "lognormal"},
            "status": "ok", "samples_ns": base, "latency": summarize([x / 1e9 for x in base]).to_json(),
            "parts": [{"point": k, "samples_ns": v, "latency": summarize([x / 1e9 for x in v]).to_json()}
                      for k, v in buckets.items()]})

    cid = "transformer/torch/b1/t1/c1/shapes@lognormal"
    changes, only_base, only_new = compare_cells([shapes(1.0)], [shapes(2.0)])
    verdicts = {c.cell_id: c.verdict for c in changes if c.metric == "latency p50"}
    assert verdicts == {cid: "unchanged", f"{cid}.seq16": "unchanged", f"{cid}.seq64": "regression"}
    assert only_base == only_new == []
    keyed = {c.cell_id for c in compare_cells(_keyed([shapes(1.0)], ["default"], True), _keyed([shapes(1.0)], ["default"], True))[0]}
    assert keyed == {f"{cid}/default", f"{cid}.seq16/default", f"{cid}.seq64/default"}
