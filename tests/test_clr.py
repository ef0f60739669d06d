"""The CLR strategies on the real Mono runtime under pythonnet (outputs against eager torch on every
built-in model are in test_strategies.py, which covers every registered strategy)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import FAST, bench_env, require_strategy, run_bench


def _open(name: str, model: str):
    return require_strategy(name).open(ModelHandle(BUILTIN_MODELS[model], 0), None, SessionOptions(1))


@pytest.mark.parametrize("name", ["clr-embed", "clr-naive"])
def test_samples_come_from_the_clrs_own_clock(name: str):
    spec = BUILTIN_MODELS["mlp"]
    with _open(name, "mlp") as session:
        x = ModelHandle(spec, 0).example_inputs(2)
        session.run(x)  # the C# application's own copy of the inputs is made once, untimed
        crossings = []
        invoke = session._invoke
        session._invoke = lambda method, *a: (crossings.append(method), invoke(method, *a))[1]
        n = 200
        timed = session.time_calls(x, n)
        # one crossing from Python into the CLR for all n calls: the loop runs in C#
        assert len(crossings) == 1
        from System.Diagnostics import Stopwatch

        tick_ns = 1e9 / Stopwatch.Frequency
        assert session.frequency == Stopwatch.Frequency
        assert len(timed.latency_ns) == n and (timed.latency_ns > 0).all()
        # every sample is a whole number of Stopwatch ticks (Mono's are 100 ns); Python's
        # perf_counter_ns would land on a multiple of 100 ns once in a hundred samples
        if tick_ns > 1 and float(tick_ns).is_integer():
            assert (timed.latency_ns % int(tick_ns) == 0).all(), timed.latency_ns[:10]
        # the breakdown is taken from the same timestamps: the phases add up to the call
        parts = sum(timed.phases_ns[p] for p in ("marshal_in", "compute", "marshal_out"))
        assert (np.abs(parts - timed.latency_ns) <= 3 * tick_ns).all()
        assert (timed.phases_ns["compute"] > 0).all()


def test_element_by_element_marshaling_is_what_clr_naive_pays():
    """Same model, same data; the naive variant's marshal phases carry the per-element cost."""
    spec = BUILTIN_MODELS["cnn"]
    x = ModelHandle(spec, 0).example_inputs(8)  # 3x32x32 floats a row: 24,576 elements in
    with _open("clr-embed", "cnn") as bulk, _open("clr-naive", "cnn") as naive:
        b, nv = bulk.time_calls(x, 5), naive.time_calls(x, 5)
    assert np.median(nv.phases_ns["marshal_in"]) > 10 * np.median(b.phases_ns["marshal_in"])


def test_python_and_dotnet_errors_carry_both_stack_traces():
    spec = BUILTIN_MODELS["mlp"]
    with _open("clr-embed", "mlp") as session:
        with pytest.raises(RuntimeError) as info:
            session.run({"x": np.zeros((2, 7), np.float32)})  # torch raises inside the call from C#
        msg = str(info.value)
        assert "the Python model call raised: mat1 and mat2 shapes cannot be multiplied" in msg
        assert "--- Python traceback ---" in msg and "fixtures/models.py" in msg
        assert "--- .NET stack trace ---" in msg and "InteropBench.Runner.Call" in msg
        with pytest.raises(RuntimeError) as info:
            session.run({"x": np.zeros((2, 256), np.complex64)})  # the C# side has no such array type
        msg = str(info.value)
        assert msg.startswith("System.NotSupportedException: dtype complex64") and "InteropBench.Dtypes.NewArray" in msg
        # the session still serves
        assert session.run(ModelHandle(spec, 0).example_inputs(1))["logits"].shape == (1, 10)


def test_managed_heap_is_reported():
    with _open("clr-embed", "transformer") as session:
        session.run(ModelHandle(BUILTIN_MODELS["transformer"], 0).example_inputs(4))
        heap = session.memory_extra()["clr_managed_heap"]
    assert 100_000 < heap < 2 << 30


@pytest.mark.parametrize("runtime", ["coreclr", "mono"])
def test_crash_of_the_clr_fails_only_its_cell(tmp_path: Path, runtime: str):
    require_strategy(f"clr-embed@{runtime}")
    crash, ok_name = f"clr-crash-test@{runtime}", f"clr-embed@{runtime}"
    p = run_bench("run", "--plugin", "tests.plugins.faulty", "--models", "mlp", "--strategies",
                  f"{crash},{ok_name}", "--batch-sizes", "2", "--concurrency", "1", "--payload-sizes", "none",
                  "--out", str(tmp_path), "--run-id", "r", *FAST, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = {json.loads(f.read_text())["cell"]["strategy"]: json.loads(f.read_text())
             for f in (tmp_path / "r" / "cells").glob("*.json")}
    crashed, ok = cells[crash], cells[ok_name]
    assert crashed["status"] == "error" and "worker died with signal SIGABRT" in crashed["error"], crashed.get("error")
    # the runtime's own report of the crash: Mono's managed stack trace, or CoreCLR's FailFast report
    assert ("Managed Stacktrace" if runtime == "mono" else "System.Environment.FailFast") in crashed["traceback"]
    log = next((tmp_path / "r" / "logs").glob("mlp__clr-crash-test*.log"))
    assert "the CLR goes down mid-cell" in log.read_text(errors="replace")
    assert not list(tmp_path.glob("mono_crash.*")), "Mono dropped a crash file into the working directory"
    assert ok["status"] == "ok" and ok["memory"]["extra"]["clr_managed_heap"] > 0
    assert ok["session"]["clock"].startswith("Stopwatch inside the CLR")
    assert ok["session"]["runtime"].startswith("Mono" if runtime == "mono" else ".NET 8")


def test_missing_mono_is_reported_with_the_command_that_installs_it(tmp_path: Path):
    import subprocess

    env = dict(bench_env(), PATH=str(Path(sys.executable).parent))  # no /usr/bin: no mono, no mcs
    p = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "clr-embed" in ln)
    rest = p.stdout.split(line, 1)[1].splitlines()[0] if "unavailable" not in line else line
    assert "apt-get install -y mono-devel" in line + rest, p.stdout
    assert os.environ.get("PATH")  # our own environment is untouched
