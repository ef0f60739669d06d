"""The typed cell record: every file shape written since the first release reads back, writes back the
same, keeps what it does not know, and keeps a cell's parts inside it."""

from __future__ import annotations

import json

import pytest

from bench.record import RECORD_VERSION, Cell, CellResult, Status, attach_parts, with_parts
from bench.results import RunDir

LAT = {"n": 600, "mean": 1.1e-4, "stdev": 1e-5, "min": 9e-5, "max": 3e-4, "p50": 1e-4, "p90": 1.2e-4,
       "p99": 2e-4, "q25": 9.5e-5, "q75": 1.05e-4, "iqr": 1e-5, "ci_low": 9.9e-5, "ci_high": 1.01e-4,
       "rel_ci": 0.01, "noisy": False, "p90_ci": [1.1e-4, 1.3e-4], "p99_ci": [1.9e-4, 2.2e-4]}

# a cell as the release before the typed record wrote it (every key the worker and the runner set)
OLD = {
    "cell": {"model": "transformer", "strategy": "onnxruntime", "batch": 1, "threads": 1, "concurrency": 1,
             "malloc": "", "scenario": "shapes", "point": "lognormal", "id": "transformer/onnxruntime/b1/t1/c1/shapes@lognormal"},
    "status": "ok", "worker_pid": 4242, "cpu_affinity": [0, 1], "malloc_env": {}, "thread_env": {"OMP_NUM_THREADS": "1"},
    "open_s": 0.5, "first_call_s": 0.01, "cold_start_s": 0.51,
    "cold_start_phases": {"interpreter": 0.4, "runtime import": 0.3, "model build": 0.1, "open": 0.4, "first call": 0.01},
    "payload_bytes": 4096, "session": {"variant": "dynamo", "providers": ["CPUExecutionProvider"]}, "measure_s": 1.5,
    "cpu": {"seconds": 0.2, "calls": 1000, "by_role": {"worker": 0.2}, "s_per_inference": 0.0002},
    "sampling": {"converged": True, "rounds": 3, "warmup_calls": 50},
    "phases": {"serialize": LAT},
    "figures": {"requests": 200},
    "scenario_detail": {"dim": "seq", "requests": [{"length": 8, "bucket": "8-15", "p50_ms": 0.1, "ok": True}]},
    "parts": [{"point": "seq8-15", "latency": LAT, "figures": {"requests": 120}, "samples_ns": [100000, 101000]},
              {"point": "seq16-31", "latency": {**LAT, "p50": 2e-4}, "figures": {}, "samples_ns": [200000]}],
    "latency": LAT, "throughput": {"calls_per_s": 10000.0, "samples_per_s": 10000.0}, "samples_ns": [100000, 99000],
    "memory": {"baseline_rss": 100, "steady_rss": 300, "peak_rss": 320, "added_steady": 200, "added_peak": 220,
               "processes": [{"pid": 4242, "role": "worker", "baseline": 100, "steady": 300, "peak": 320}], "extra": {}},
    "correctness": {"ok": True, "atol": 1e-4, "rtol": 1e-3, "problems": [],
                    "outputs": {"logits": {"shape": [1, 4], "dtype": "float32", "max_abs": 1e-6, "max_rel": 2e-6, "ok": True,
                                           "worst": {"error": 1e-6, "allowed": 1e-4, "used": 0.01, "index": [0, 1]}}}},
    "prepare": {"cache_hit": True, "seconds": 0.0, "built_seconds": 12.5},
    "wall_s": 3.2,
}


def test_an_old_record_reads_as_typed_attributes_and_writes_back_the_same_file():
    r = CellResult.from_json(json.loads(json.dumps(OLD)))
    assert r.record_version == 1 and r.status is Status.OK and r.ok and r.status.ran
    assert r.cell == Cell("transformer", "onnxruntime", 1, 1, 1, "", "shapes", "lognormal")
    assert r.latency.p50 == 1e-4 and r.latency.p99_ci == (1.9e-4, 2.2e-4) and r.phases["serialize"].n == 600
    assert r.memory.processes[0].role == "worker" and r.memory.added_steady == 200
    assert r.correctness.outputs["logits"].max_rel == 2e-6 and r.correctness.max_abs == 1e-6
    assert r.cpu.s_per_inference == 0.0002 and r.prepare.built_seconds == 12.5 and r.samples_per_s == 10000.0
    assert r.detail["dim"] == "seq" and [p.point for p in r.parts] == ["seq8-15", "seq16-31"]
    back = r.to_json()
    assert back.pop("record_version") == RECORD_VERSION
    assert back == OLD  # every key as it was written
    assert CellResult.from_json(r.to_json()) == CellResult.from_json(r.to_json())  # and again, unchanged


def test_keys_it_does_not_know_are_kept_at_every_level():
    d = json.loads(json.dumps(OLD))
    d["from_a_newer_release"] = {"x": 1}
    d["memory"]["swap"] = 7
    d["correctness"]["outputs"]["logits"]["p99_abs"] = 3e-7
    d["latency"]["p99.9"] = 3e-4
    d["cell"]["host"] = "b"
    d["record_version"] = 9
    back = CellResult.from_json(d).to_json()
    assert back == d  # a newer release's file passes through this one unchanged


def test_a_new_record_writes_what_every_cell_file_has_carried():
    r = CellResult(Cell("mlp", "torch", 1, 1, 1), Status.ERROR, "boom")
    d = r.to_json()
    assert {"session", "malloc_env", "thread_env", "cold_start_phases", "prepare"} <= set(d) and d["prepare"] is None
    assert "latency" not in d and "samples_ns" not in d and d["record_version"] == RECORD_VERSION


def test_records_from_before_scenarios_gain_theirs_and_keep_their_ids():
    first_release = {"cell": {"model": "mlp", "strategy": "torch", "batch": 8, "threads": 1, "concurrency": 4},
                     "status": "ok", "latency": {k: v for k, v in LAT.items() if not k.endswith("_ci")}}
    r = CellResult.from_json(first_release)
    assert r.cell.scenario == "closed-loop" and r.id == "mlp/torch/b8/t1/c4"
    assert r.latency.p99_ci is None and r.latency.p99 == 2e-4
    assert CellResult.from_json({"cell": {**first_release["cell"], "model": "identity"}, "status": "ok"}).cell.scenario == "payload"


def test_a_failed_cell_has_empty_parts_and_no_figures():
    r = CellResult.from_json({"cell": OLD["cell"], "status": "error", "error": "RuntimeError: boom\nmore", "traceback": "t"})
    assert r.status is Status.ERROR and not r.status.ran and r.latency is None and r.parts == [] and r.detail == {}
    assert r.first_error_line == "RuntimeError: boom" and r.p50 is None


@pytest.mark.parametrize("bad", [[], {"status": "ok"}, {"cell": {"model": "m"}, "status": "ok"},
                                 {"cell": OLD["cell"], "status": "splendid"}, {"cell": OLD["cell"]}])
def test_what_is_not_a_cell_record_is_refused(bad):
    with pytest.raises((ValueError, KeyError, TypeError)):
        CellResult.from_json(bad)


def test_parts_become_rows_only_when_asked_and_go_back_inside_their_cell(tmp_path):
    run = RunDir(tmp_path / "r")
    r = CellResult.from_json(json.loads(json.dumps(OLD)))
    run.write_cell(r)
    (run.cells_dir / "junk.json").write_text('{"status": "ok"}')
    cells = run.load_cells()
    assert cells == [r] and run.unreadable == ["junk.json (ValueError)"]
    table = with_parts(cells)
    assert [x.id for x in table] == [r.id, r.id + ".seq8-15", r.id + ".seq16-31"]
    assert all(x.part_of == r.id for x in table[1:]) and table[2].p50 == 2e-4 and table[2].throughput.calls_per_s == 5000.0
    assert "part_of" not in table[1].to_json()
    # a history store of the release before kept each part as a row of its own, and the cell without them
    stored = [{**x.to_json(), "part_of": x.part_of} if x.part_of else {**x.to_json(), "parts": []} for x in table]
    assert attach_parts([CellResult.from_json(d) for d in stored]) == [r]
    assert run.load_cells(samples=False)[0].samples_ns is None and run.load_cells(samples=False)[0].parts[0].samples_ns is None
    assert len(run.frame()) == 3
