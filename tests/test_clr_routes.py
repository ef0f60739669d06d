"""The .NET routes without pythonnet in the call path (clr-onnxruntime, clr-capi) and what every
clr-* strategy shares: CoreCLR beside Mono, and concurrent callers that are C# threads. Outputs
against eager torch on every built-in model are in test_strategies.py (in this process, on the
default runtime, CoreCLR) and in the quick run (every clr-* route also @mono, in worker processes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.loading import build_model, run_eager
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import FAST, require_strategy, run_bench

ROUTES = ["clr-embed", "clr-onnxruntime", "clr-capi"]


def _open(name: str, model: str, tmp_path: Path, threads: int = 1):
    strategy = require_strategy(name)
    handle = ModelHandle(BUILTIN_MODELS[model], 0)
    art = None
    if strategy.needs_artifacts:
        art = tmp_path / f"{name}-{model}"
        art.mkdir()
        strategy.prepare(handle, art)
    return strategy.open(handle, art, SessionOptions(threads))


@pytest.mark.parametrize("name", ROUTES)
def test_concurrent_callers_are_clr_threads_and_python_never_calls_the_model(name: str, tmp_path: Path):
    spec = BUILTIN_MODELS["mlp"]
    x = ModelHandle(spec, 0).example_inputs(2)
    with _open(name, "mlp", tmp_path) as session:
        python_calls = []
        session.run = lambda inputs: python_calls.append(threading.get_ident())  # type: ignore[method-assign]
        load = session.run_load(x, 3, 0.3, 0.1)
        assert not load.error and not python_calls, (load.error, python_calls)
        assert len(load.latency_ns) > 30 and (load.latency_ns > 0).all() and 0.25 < load.wall_s <= 0.3 + 1e-6
        assert load.latency_ns.sum() > 0.5 * 3 * load.wall_s * 1e9  # three callers busy most of the window
        threads = session.load_threads
        # three threads of the CLR's own (managed ids from the CLR, distinct OS threads), none of them
        # a Python thread: the harness's thread only waited in ClosedLoop.Run
        assert len(set(threads["managed"])) == 3 and len(set(threads["native"])) == 3
        python_native = {t.native_id for t in threading.enumerate()}
        assert not python_native & set(threads["native"]), (python_native, threads)


def test_clr_onnxruntime_binds_outputs_to_net_arrays_and_reports_its_phases(tmp_path: Path):
    spec = BUILTIN_MODELS["transformer"]
    x = ModelHandle(spec, 0).example_inputs(4)
    expected = run_eager(build_model(spec, 0), spec, x)
    with _open("clr-onnxruntime", "transformer", tmp_path) as session:
        first = session.run(x)
        timed = session.time_calls(x, 50)
        again = session.run(x)
        caller = session._caller(x)
        assert caller.OutputsReused  # after the first call, ORT writes straight into .NET memory
        for out in (first, again):
            np.testing.assert_allclose(out["pooled"], expected["pooled"], atol=spec.atol, rtol=spec.rtol)
        parts = sum(timed.phases_ns[p] for p in ("wrap_in", "run", "copy_out"))
        assert (parts <= timed.latency_ns).all() and (timed.latency_ns - parts < 50_000).all()
        assert np.median(timed.phases_ns["run"]) > 5 * np.median(timed.phases_ns["copy_out"])
        d = session.describe()
        assert "bound as Run's outputs" in d["outputs"] and "C API version" in d["library"]


def test_onnx_runtime_errors_surface_with_ort_s_own_message(tmp_path: Path):
    require_strategy("clr-onnxruntime")
    from strategies.clr.strategy import ClrSession, runtime_of
    from strategies.shared import dotnet
    from strategies.shared.ort_library import ort_library

    ib = dotnet.load(runtime_of({}))
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeError, match=r"CreateSession failed \(ORT_INVALID_PROTOBUF\)"):
        ClrSession._invoke(ib.OrtRunner, str(ort_library()), str(bad), 1, 99, True)
    with pytest.raises(RuntimeError, match=r"ORT_NO_SUCHFILE"):
        ClrSession._invoke(ib.OrtRunner, str(ort_library()), str(tmp_path / "missing.onnx"), 1, 99, True)
    with pytest.raises(RuntimeError, match=r"cannot load the ONNX Runtime library"):
        ClrSession._invoke(ib.OrtRunner, str(tmp_path / "libnothing.so"), str(bad), 1, 99, True)


def test_a_wrong_runtime_is_refused_before_any_cell_runs(tmp_path: Path):
    """A runtime that does not exist, by flag or by name, is one line and exit status 2."""
    require_strategy("clr-onnxruntime")
    p = run_bench("run", "--models", "mlp", "--strategies", "clr-onnxruntime", "--clr-runtime", "java",
                  "--batch-sizes", "1", "--concurrency", "1", "--payload-sizes", "none", "--out", str(tmp_path),
                  *FAST, cwd=tmp_path)
    assert p.returncode == 2 and "runtime must be one of coreclr, mono" in p.stderr, p.stderr
    p = run_bench("run", "--models", "mlp", "--strategies", "clr-onnxruntime@java", "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "clr-onnxruntime@coreclr, clr-onnxruntime@mono" in p.stderr, p.stderr


def test_python_errors_under_the_c_api_carry_the_traceback_and_leave_the_gil_free(tmp_path: Path):
    require_strategy("clr-capi")
    from strategies.clr.strategy import ClrSession, runtime_of
    from strategies.clr_capi.strategy import libpython
    from strategies.shared import dotnet

    ib = dotnet.load(runtime_of({}))
    seen = []

    def model(meta: str, *views: memoryview):
        seen.append((meta, [type(v).__name__ for v in views], [v.readonly for v in views]))
        if len(seen) == 2:
            raise ValueError("boom from the model")
        return (np.frombuffer(views[0], dtype=np.float32) * 2,)

    runner = ib.CapiRunner(str(libpython()), id(model))
    try:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        from System import Array, Int64, String

        shapes = Array.CreateInstance(Array[Int64], 1)
        shapes[0] = Array[Int64]([2, 3])
        caller = runner.NewCaller(Array[String](["float32"]), shapes, Array[Int64]([x.ctypes.data]))
        caller.CallOnce()
        with pytest.raises(RuntimeError, match="ValueError: boom from the model") as err:
            ClrSession._invoke(caller.CallOnce)
        assert "Python traceback" in str(err.value) and "in model" in str(err.value)
        caller.CallOnce()  # the GIL was given back on the error path: the runner still works
        out = np.empty(6, dtype=np.float32)
        caller.CopyOutput(0, out.ctypes.data)
        np.testing.assert_array_equal(out, x.ravel() * 2)
        # only metadata crossed as text; the data came as read-only memoryviews over .NET memory
        meta, kinds, readonly = seen[0]
        assert json.loads(meta) == [{"dtype": "float32", "shape": [2, 3]}]
        assert kinds == ["memoryview"] and readonly == [True]
    finally:
        runner.Dispose()


def test_every_route_on_mono_gives_eager_torch_s_outputs_on_every_built_in_model(tmp_path: Path):
    """The same routes on the other CLR, each cell in its own worker process: the harness checks every
    cell's outputs against eager torch (a wrong output is status invalid), with one caller and two."""
    import json

    names = [f"{n}@mono" for n in ("clr-embed", "clr-onnxruntime", "clr-capi")]
    for n in names:
        require_strategy(n)
    p = run_bench("run", "--models", "mlp,cnn,transformer", "--strategies", ",".join(names), "--batch-sizes", "1,3",
                  "--concurrency", "1,2", "--payload-sizes", "1KiB", "--out", str(tmp_path), "--run-id", "mono",
                  "--no-history", *FAST, cwd=tmp_path, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = [json.loads(f.read_text()) for f in (tmp_path / "mono" / "cells").glob("*.json")]
    assert len(cells) == 3 * 3 * 2 * 2 + 3 + 3  # + the transformer's lengths (the shapes scenario), one per route
    bad = [(c["cell"]["id"], c["status"], c.get("error")) for c in cells if c["status"] != "ok"]
    assert not bad, bad
    assert all(c["session"]["runtime"].startswith("Mono") for c in cells)
