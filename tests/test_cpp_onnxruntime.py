"""The C++ caller of ONNX Runtime: really compiled against ORT's headers, really linked to the
wheel's libonnxruntime, on the same ONNX file as the Python onnxruntime strategy."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench.measure import closed_loop
from fixtures.builtin import BUILTIN_MODELS
from strategies.base import ModelHandle, SessionOptions
from strategies.shared.onnx_export import MODEL_FILE, export_into
from tests.conftest import require_strategy


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in cache:
            s = require_strategy("cpp-onnxruntime")
            d = tmp_path_factory.mktemp(f"cpp-ort-{model}")
            s.prepare(ModelHandle(BUILTIN_MODELS[model], 0), d)
            cache[model] = d
        return cache[model]

    return get


def open_session(model: str, art: Path, threads: int = 1, callers: int = 1):
    s = require_strategy("cpp-onnxruntime")
    return s.open(ModelHandle(BUILTIN_MODELS[model], 0), art, SessionOptions(threads, callers))


def test_inputs_and_outputs_cross_without_copies(prepared):
    spec = BUILTIN_MODELS["mlp"]
    with open_session("mlp", prepared("mlp")) as session:
        x = ModelHandle(spec, 0).example_inputs(4)
        out = session.run(x)["logits"]
        assert session.runner.last_input_ptrs() == [x["x"].ctypes.data]  # ORT read the caller's buffer
        assert session.runner.last_output_ptrs() == [out.ctypes.data]  # the array views ORT's output
        assert type(out.base).__name__ == "PyCapsule" and not out.flags.owndata
        first = out.copy()
        session.run(ModelHandle(spec, 1).example_inputs(4))  # another call does not overwrite it
        np.testing.assert_array_equal(out, first)
    np.testing.assert_array_equal(out, first)  # the output outlives the session that made it


def test_every_ort_route_runs_one_export(tmp_path: Path):
    """With a content hash the export is cached once and hard-linked into each route's artifacts."""
    spec = BUILTIN_MODELS["mlp"]
    handle = ModelHandle(spec, 0, content_hash="test-hash-mlp")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    export_into(handle, a, tmp_path / "cache")
    shared = next((tmp_path / "cache" / "onnx-export").glob("mlp-*"))
    mtime = (shared / MODEL_FILE).stat().st_mtime_ns
    export_into(handle, b, tmp_path / "cache")
    assert (shared / MODEL_FILE).stat().st_mtime_ns == mtime  # not exported again
    assert (a / MODEL_FILE).stat().st_ino == (b / MODEL_FILE).stat().st_ino == (shared / MODEL_FILE).stat().st_ino


def test_timing_runs_in_cpp_without_the_gil(prepared):
    spec = BUILTIN_MODELS["mlp"]
    with open_session("mlp", prepared("mlp")) as session:
        x = ModelHandle(spec, 0).example_inputs(8)
        ticks = []
        stop = threading.Event()

        def python_thread() -> None:
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.001)

        t = threading.Thread(target=python_thread)
        t.start()
        t0 = time.perf_counter_ns()
        timings = session.time_calls(x, 2000)
        wall = time.perf_counter_ns() - t0
        stop.set()
        t.join()
        assert len(ticks) > 10  # Python ran while C++ timed its 2000 calls: the GIL was released
        lat = timings.latency_ns
        assert lat.shape == (2000,) and (lat > 0).all() and (timings.phases_ns["run"] > 0).all()
        # the C++ clock's calls account for the time Python saw pass around the whole loop: the loop
        # adds little between calls, and no call is counted that did not happen in that time
        assert 0.7 * wall < lat.sum() <= wall, (lat.sum(), wall)
        assert (timings.phases_ns["run"] < lat).all()


def test_concurrent_callers_are_cpp_threads(prepared):
    """During a load no Python thread calls run(); the process gains one OS thread per caller."""
    spec = BUILTIN_MODELS["mlp"]
    with open_session("mlp", prepared("mlp"), callers=3) as session:
        x = ModelHandle(spec, 0).example_inputs(1)
        python_calls = []
        real_run = session.run
        session.run = lambda inputs: (python_calls.append(1), real_run(inputs))[1]
        me = psutil.Process()
        before = me.num_threads()
        peak = [before]
        load = closed_loop(session, x, 3, 0.5, 0.1, lambda: peak.append(me.num_threads()))
        assert not load.errors and load.calls > 100
        assert python_calls == []
        assert max(peak) >= before + 3 + 1  # three C++ callers and the Python thread waiting on them
        assert len(load.latency_ns) == load.calls and 0.4 < load.wall_s < 1.5


def test_ort_errors_reach_python_with_ort_message(prepared, tmp_path: Path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MODEL_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="(?i)protobuf|parsing|load model"):
        open_session("mlp", bad)
    with open_session("mlp", prepared("mlp")) as session:
        with pytest.raises(RuntimeError, match="(?i)dimension|shape|invalid"):
            session.run({"x": np.zeros((2, 7), np.float32)})  # ORT's status message for a wrong shape
        with pytest.raises(ValueError, match="not C-contiguous"):
            session.run({"x": np.zeros((256, 2), np.float32).T})
        with pytest.raises(RuntimeError, match="(?i)type|float"):
            session.run({"x": np.zeros((2, 256), np.float64)})
        load = closed_loop(session, {"x": np.zeros((1, 7), np.float32)}, 2, 0.2, 0.0)
        assert load.errors and "7" in load.errors[0]  # a failing C++ caller ends the load with ORT's message
        assert session.run(ModelHandle(BUILTIN_MODELS["mlp"], 0).example_inputs(1))["logits"].shape == (1, 10)
