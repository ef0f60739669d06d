"""Whole runs in real worker processes: isolation of failures, kill and resume, caching, BYOM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

from bench import allocator, record
from bench.results import RunDir
from fixtures.builtin import BUILTIN_MODELS
from reports.tables import decisions
from tests.byom_models import TWO_INPUT_SPEC
from tests.conftest import FAST, QUICK_MODELS, QUICK_PAYLOADS, QUICK_STRATEGIES, bench_env, run_bench


def _cells(run: Path) -> dict[str, record.CellResult]:
    return {r.cell.id: r for r in RunDir(run).load_cells()}


def test_crashing_and_wrong_strategies_fail_only_their_cells(tmp_path: Path):
    p = run_bench("run", "--plugin", "tests.plugins.faulty", "--models", "mlp", "--strategies",
                  "torch,crash-test,wrong-test", "--batch-sizes", "2", "--concurrency", "1",
                  "--payload-sizes", "none", "--out", str(tmp_path), "--run-id", "r", *FAST, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = _cells(tmp_path / "r")
    crash, wrong, ok = cells["mlp/crash-test/b2/t1/c1"], cells["mlp/wrong-test/b2/t1/c1"], cells["mlp/torch/b2/t1/c1"]
    assert crash.status == "error" and "SIGKILL" in crash.error, crash.error
    assert wrong.status == "invalid" and "wrong outputs" in wrong.error
    assert wrong.latency.n > 0  # measured, but not trusted
    assert ok.status == "ok" and ok.correctness.ok and ok.latency.n >= 1
    # never ranked
    df = RunDir(tmp_path / "r").frame()
    (d,) = decisions(df)
    assert [s for s, *_ in d.ranking] == ["torch"]
    assert {s for s, _ in d.excluded} == {"crash-test", "wrong-test"}
    # strict mode turns them into a failing exit status for CI
    p = run_bench("run", "--resume", str(tmp_path / "r"), "--strict", "--no-report", cwd=tmp_path)
    assert p.returncode == 1 and "strict: mlp/crash-test/b2/t1/c1 is error" in p.stderr


def test_killed_run_leaves_readable_results_and_resumes(tmp_path: Path):
    args = [sys.executable, "-m", "bench", "run", "--models", "mlp,cnn", "--strategies", "torch,onnxruntime",
            "--batch-sizes", "1,2", "--concurrency", "1", "--payload-sizes", "none", "--out", str(tmp_path),
            "--run-id", "k", *FAST]
    proc = subprocess.Popen(args, cwd=tmp_path, env=bench_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    run = RunDir(tmp_path / "k")
    deadline = time.time() + 600
    while time.time() < deadline and len(list(run.cells_dir.glob("*.json"))) < 3:
        time.sleep(0.1)
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and anything it started, mid-cell
    proc.wait()
    time.sleep(0.5)
    assert not [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    done = run.load_cells()
    assert 3 <= len(done) < 8
    assert all(r.status == "ok" for r in done)
    assert run.meta()["status"] == "running"
    before = {r.cell.id: r.worker_pid for r in done}
    # readable (written atomically), a row per finished cell; the summary is rewritten just after
    # each cell's file, so a kill between the two leaves it one cell behind (--resume rewrites it)
    summary = pd.read_csv(run.path / "summary.csv")
    assert len(done) - 1 <= len(summary) <= len(done) and set(summary.cell_id) <= set(before)
    assert summary.p50_ms.notna().all()

    p = run_bench("run", "--resume", str(run.path), "--no-report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming" in p.stderr
    after = _cells(run.path)
    assert len(after) == 8 and all(r.status == "ok" for r in after.values())
    assert all(after[k].worker_pid == pid for k, pid in before.items()), "finished cells were measured again"
    assert run.meta()["status"] == "complete"
    # the ONNX exports from the first attempt are reused
    ort = [r for r in after.values() if r.cell.strategy == "onnxruntime"]
    assert all(r.prepare.cache_hit for r in ort if r.cell.id not in before)


def test_bring_your_own_model_from_the_command_line(tmp_path: Path):
    p = run_bench("run", "--model-factory", "tests.byom_models:make_two_inputs", "--model-inputs", TWO_INPUT_SPEC,
                  "--model-name", "two", "--strategies", "torch,onnxruntime", "--batch-sizes", "3",
                  "--concurrency", "1", "--payload-sizes", "none", "--out", str(tmp_path), "--run-id", "b", *FAST,
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = _cells(tmp_path / "b")
    assert set(cells) == {"two/torch/b3/t1/c1", "two/onnxruntime/b3/t1/c1"}
    for r in cells.values():
        assert r.status == "ok", r.error
        assert set(r.correctness.outputs) == {"score", "norm"}  # names from the model's dict


def _byom_config(tmp_path: Path, models: list[str], strategies: list[str], name: str, factory: str) -> Path:
    """A config with one bring-your-own model ``name`` (x:float32[batch,4]), batch 2, one caller,
    tiny budgets, no payload sweep."""
    cfg = tmp_path / "bench.toml"
    cfg.write_text(f"""
models = {json.dumps(models)}
strategies = {json.dumps(strategies)}
batch_sizes = [2]
concurrency = [1]
[payload_sweep]
sizes = []
[sampling]
warmup_s = 0.02
min_time_s = 0.05
max_time_s = 0.1
[[model]]
name = "{name}"
factory = "{factory}"
inputs = "x:float32[batch,4]"
""")
    return cfg


def test_export_failure_fails_only_that_strategys_cells(tmp_path: Path):
    cfg = _byom_config(tmp_path, ["dd", "mlp"], ["torch", "onnxruntime"], "dd", "tests.byom_models:make_data_dependent")
    p = run_bench("run", "--config", str(cfg), "--out", str(tmp_path), "--run-id", "e", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = _cells(tmp_path / "e")
    bad = cells["dd/onnxruntime/b2/t1/c1"]
    assert bad.status == "error" and bad.error.startswith("prepare failed: ExportError: ONNX export failed")
    assert "GuardOnDataDependentSymNode" in bad.error
    assert all(cells[c].status == "ok" for c in ("dd/torch/b2/t1/c1", "mlp/torch/b2/t1/c1", "mlp/onnxruntime/b2/t1/c1"))
    html = (tmp_path / "e" / "report.html").read_text()
    assert "GuardOnDataDependentSymNode" in html


def test_custom_operator_fails_each_route_that_cannot_run_it_in_its_own_words(tmp_path: Path):
    """A model with a team's own operator: eager torch runs it; each route that cannot says why in one
    line (the ONNX exporter, ExecuTorch's lowering, LibTorch without Python's op registry); the
    others go on."""
    cfg = _byom_config(tmp_path, ["co"], ["torch", "onnxruntime", "cpp-onnxruntime", "openvino", "executorch", "libtorch-ts"],
                       "co", "tests.byom_models:make_custom_op")
    p = run_bench("run", "--config", str(cfg), "--out", str(tmp_path), "--run-id", "c", "--no-report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = {r.cell.strategy: r for r in RunDir(tmp_path / "c").load_cells()}
    assert cells["torch"].status == "ok"
    expected = {"onnxruntime": "ONNX export failed", "cpp-onnxruntime": "ONNX export failed",
                "openvino": "OpenVINO: ONNX export failed", "executorch": "ExecuTorch",
                "libtorch-ts": "Unknown builtin op: interop_bench_tests::clipped_square"}
    for strategy, words in expected.items():
        r = cells[strategy]
        assert r.status == "error" and words in r.error, (strategy, r.error)
        assert "\n" not in r.error and "\x1b" not in r.error, (strategy, r.error)
        assert "clipped_square" in r.error, (strategy, r.error)  # each names the operator


def test_quick_run_results_are_complete(quick_run: Path):
    run = RunDir(quick_run)
    meta = run.meta()
    assert meta["status"] == "complete"
    env = meta["environment"]
    for key in ("cpu_model", "logical_cores", "os", "python", "packages", "strategy_runtimes", "git", "thread_env"):
        assert env.get(key) is not None, key
    assert env["packages"]["torch"].startswith("2.") and env["strategy_runtimes"]["onnxruntime"]["onnxruntime"]
    cells = run.load_cells()  # cells only: a shapes cell's length buckets are inside it
    rows = record.with_parts(cells)
    n = len(QUICK_STRATEGIES)
    shaped = sum(1 for m in QUICK_MODELS if BUILTIN_MODELS[m].dims)
    assert len(cells) == len(meta["cells"]) == len(QUICK_MODELS) * n * 2 * 2 + len(QUICK_PAYLOADS) * n + shaped * n
    assert len(rows) > len(cells)
    for r in cells:
        # a route built not to take the model's range of lengths says so (ExecuTorch: XNNPACK keeps one dynamic dimension)
        declared = r.status == "unsupported" and r.cell.scenario == "shapes" and r.cell.strategy == "executorch"
        assert r.status == "ok" or declared, (r.cell.id, r.error)
        if declared:  # it said what it cannot take, and measured nothing of this cell
            assert "seq fixed at 32" in r.error
            continue
        assert len(r.samples_ns) == min(r.latency.n, 50_000) > 0  # raw samples kept up to 50,000, evenly thinned
        assert r.memory.steady_rss > 0 and r.memory.peak_rss >= r.memory.baseline_rss
        assert r.cold_start_s >= r.first_call_s > 0
        phases = r.cold_start_phases  # the same phases for every strategy
        assert set(phases) == {"interpreter", "runtime import", "model build", "open", "first call"}, phases
        assert 0 < phases["interpreter"] < 30 and phases["first call"] == r.first_call_s
        assert abs(phases["model build"] + phases["open"] - r.open_s) < 1e-6
        assert r.throughput.samples_per_s > 0
        assert r.malloc_env == {}  # the default policy, glibc as shipped, reached every worker
    df = run.frame()
    assert set(df.columns) >= {"p50_ms", "p99_ms", "iqr_ms", "throughput_sps", "mem_peak_mb", "vs_torch_p50", "max_abs_err"}
    assert (df[df.strategy == "torch"].vs_torch_p50 == 1.0).all()
    assert json.loads((quick_run / "summary.json").read_text())[0]["run_id"] == "quick"
    # the strategies innermost: each row's strategies measured next to each other
    order = [c["strategy"] for c in meta["cells"][: 2 * n]]
    assert order == QUICK_STRATEGIES * 2


def test_cells_can_be_pinned_to_cpus_and_given_the_steady_allocator(tmp_path: Path):
    p = run_bench("run", "--models", "mlp", "--strategies", "torch,grpc", "--batch-sizes", "1", "--concurrency", "1",
                  "--payload-sizes", "none", "--cpus", "0", "--malloc", "steady", "--out", str(tmp_path), "--run-id", "p",
                  *FAST, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    for r in _cells(tmp_path / "p").values():
        assert r.status == "ok" and r.cpu_affinity == [0], (r.cell.id, r.cpu_affinity)
        assert r.malloc_env == allocator.STEADY_ENV, r.malloc_env
    html = (tmp_path / "p" / "report.html").read_text()
    assert "each cell&#x27;s processes on CPUs [0]" in html and "glibc keeps freed memory for reuse" in html


def test_allocators_as_a_dimension_and_a_planted_allocator_dependent_ranking_is_flagged(tmp_path: Path):
    """--malloc default,jemalloc measures every cell under both; the run ranks each policy apart and
    flags the model whose winner changes: slow-test waits 1 ms per call, malloc-sensitive-test 2 ms
    except under jemalloc, where it waits none."""
    cfg = tmp_path / "bench.toml"
    cfg.write_text('plugins = ["tests.plugins.faulty"]\n[strategy.slow-test]\ndelay_us = 1000\n')
    p = run_bench("run", "--config", str(cfg), "--models", "mlp", "--strategies", "slow-test,malloc-sensitive-test",
                  "--batch-sizes", "1", "--concurrency", "1", "--payload-sizes", "none", "--malloc", "default,jemalloc",
                  "--out", str(tmp_path), "--run-id", "a", *FAST, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = _cells(tmp_path / "a")
    assert set(cells) == {f"mlp/{s}/b1/t1/c1/{m}" for s in ("slow-test", "malloc-sensitive-test")
                          for m in ("default", "jemalloc")}
    for cid, r in cells.items():
        assert r.status == "ok", (cid, r.error)
        preload = r.malloc_env.get("LD_PRELOAD", "")
        assert ("libjemalloc" in preload) == cid.endswith("/jemalloc"), (cid, r.malloc_env)
    assert "allocator-dependent ranking: mlp, batch 1" in p.stdout
    assert "under default slow-test" in p.stdout and "under jemalloc malloc-sensitive-test" in p.stdout
    md = (tmp_path / "a" / "report.md").read_text()
    assert "Rankings that change with the allocator" in md and "| mlp | 1 | 1 | jemalloc | malloc-sensitive-test |" in md
