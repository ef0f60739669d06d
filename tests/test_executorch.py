"""The executorch strategy through the real ExecuTorch runtime: thread pool, delegation report, batch
bound, lowering failures, output copies and per-thread programs. (Outputs against eager torch on
every model are in test_strategies.py.)"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.custom import make_custom_model
from fixtures.loading import build_model, run_eager
from fixtures.specs import parse_input_spec
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import require_strategy


@pytest.fixture(scope="module")
def strategy():
    return require_strategy("executorch")


@pytest.fixture(scope="module")
def artifacts(strategy, tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in cache:
            d = tmp_path_factory.mktemp(f"executorch-{model}")
            strategy.prepare(ModelHandle(BUILTIN_MODELS[model], 0), d)
            cache[model] = d
        return cache[model]

    return get


def open_session(strategy, artifacts, model: str, threads: int = 1, concurrency: int = 1):
    return strategy.open(ModelHandle(BUILTIN_MODELS[model], 0), artifacts(model), SessionOptions(threads, concurrency))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_thread_pool_takes_the_cells_threads(strategy, artifacts):
    """The pool's size reads back as the cell's threads, and the process really gains the workers."""
    from strategies.executorch.strategy import runtime_module

    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts OS threads through /proc")
    et = runtime_module()
    counts = {}
    for threads in (1, 3):
        with open_session(strategy, artifacts, "mlp", threads=threads) as s:
            assert s.describe()["threads"] == threads
            assert et._threadpool_get_thread_count() == threads
            s.run(ModelHandle(BUILTIN_MODELS["mlp"], 0).example_inputs(64))
            counts[threads] = os_threads()
    assert counts[3] - counts[1] == 2, counts  # the calling thread is the pool's first worker


def test_delegation_report_complete_and_partial(strategy, artifacts):
    with open_session(strategy, artifacts, "mlp") as s:
        assert s.describe()["per model"]["xnnpack delegation"] == "complete: all 5 ops in 1 XNNPACK subgraph"
    info = json.loads((artifacts("mlp") / "executorch.json").read_text())["delegation"]
    assert info["complete"] and info["portable_ops"] == 0 and info["delegated"] == {"aten.linear.default": 3, "aten.relu.default": 2}

    with open_session(strategy, artifacts, "cnn") as s:
        summary = s.describe()["per model"]["xnnpack delegation"]
    # flatten() on a dynamic batch becomes a view_copy XNNPACK does not take
    assert summary.startswith("partial: 1 of "), summary
    assert "ops on portable kernels (aten.view_copy.default)" in summary
    info = json.loads((artifacts("cnn") / "executorch.json").read_text())["delegation"]
    assert not info["complete"] and info["portable"] == {"aten.view_copy.default": 1}
    assert info["delegated"]["aten.convolution.default"] == 2 and info["delegated"]["aten.linear.default"] == 1


def test_batch_bound_is_the_declared_one(strategy, artifacts):
    """Lowering the cnn narrows the batch range to 15 rows (a fake-tensor conv guard); the strategy
    restores the declared bound, so the program takes its full 1024 rows."""
    info = json.loads((artifacts("cnn") / "executorch.json").read_text())
    assert info["max_batch"] == info["declared_max_batch"] == 1024
    spec = BUILTIN_MODELS["cnn"]
    x = ModelHandle(spec, 0).example_inputs(1024)
    with open_session(strategy, artifacts, "cnn") as s:
        got = s.run(x)["logits"]
    np.testing.assert_allclose(got, run_eager(build_model(spec, 0), spec, x)["logits"], atol=spec.atol, rtol=spec.rtol)


def test_batch_above_the_bound_fails_clearly(strategy, artifacts):
    from strategies.executorch.strategy import BatchTooLarge

    handle = ModelHandle(BUILTIN_MODELS["mlp"], 0)
    with open_session(strategy, artifacts, "mlp") as s:
        assert s.describe()["per model"]["batch bound"] == "1024"
        assert s.run(handle.example_inputs(1024))["logits"].shape == (1024, 10)
        with pytest.raises(BatchTooLarge, match=r"^batch 1025 exceeds the ExecuTorch program's bound of 1024 rows"):
            s.run(handle.example_inputs(1025))
        assert s.run(handle.example_inputs(8))["logits"].shape == (8, 10)  # still usable afterwards


def test_identity_takes_the_largest_payload(strategy, artifacts):
    """The payload sweep's 64 MiB on the identity model fits the bound."""
    with open_session(strategy, artifacts, "identity") as s:
        assert s.describe()["per model"]["batch bound"] == str(64 * 1024)
        assert "copied into the planned arena" in s.describe()["per model"]["inputs"]


def test_lowering_failure_is_one_line_naming_the_cause(strategy, tmp_path: Path):
    spec = make_custom_model("dd", "tests.byom_models:make_data_dependent", parse_input_spec("x:float32[batch,4]"), ("y",))
    with pytest.raises(RuntimeError) as info:
        strategy.prepare(ModelHandle(spec, 0), tmp_path)
    msg = str(info.value)
    assert msg.startswith("ExecuTorch export failed (GuardOnDataDependentSymNode): "), msg
    assert "byom_models.py:41 `if x.sum() > 0:`" in msg, msg
    assert "\n" not in msg and "\x1b" not in msg
    assert not (tmp_path / "model.pte").exists()


def test_outputs_survive_the_next_call(strategy, artifacts):
    """The runtime reuses its planned output memory; a returned array must not change under the caller."""
    spec = BUILTIN_MODELS["mlp"]
    a, b = (ModelHandle(spec, seed).example_inputs(4) for seed in (0, 1))
    with open_session(strategy, artifacts, "mlp") as s:
        first = s.run(a)["logits"]
        kept = first.copy()
        s.run(b)
    np.testing.assert_array_equal(first, kept)


def test_inputs_are_not_copied_into_the_arena(strategy, artifacts):
    with open_session(strategy, artifacts, "mlp") as s:
        assert s.describe()["per model"]["inputs"].startswith("zero-copy")
        meta = s._runner.method.method_meta()
        assert not meta.input_tensor_meta(0).is_memory_planned()


def test_concurrent_callers_share_one_program_correctly(strategy, artifacts):
    """Three threads on one session: each gets its own results (the lock serialises the one method),
    and the planned arena is reported once, as resident memory."""
    spec = BUILTIN_MODELS["transformer"]
    eager = build_model(spec, 0)
    cases = [ModelHandle(spec, seed).example_inputs(3 + seed) for seed in range(3)]
    expected = [run_eager(eager, spec, x) for x in cases]
    errors: list[str] = []
    with open_session(strategy, artifacts, "transformer", concurrency=3) as s:
        arena = json.loads((artifacts("transformer") / "executorch.json").read_text())["planned_arena_bytes"]
        assert s.memory_extra() == {"executorch_planned_arena": arena} and arena > 0

        done = [0, 0, 0]

        def caller(i: int) -> None:
            try:
                for _ in range(10):
                    got = s.run(cases[i])
                    for k, e in expected[i].items():
                        if got[k].shape != e.shape or not np.allclose(got[k], e, atol=spec.atol, rtol=spec.rtol):
                            errors.append(f"caller {i}: wrong {k}")
                    done[i] += 1
            except Exception as e:  # a failing call must fail the test, not end a thread quietly
                errors.append(f"caller {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert done == [10, 10, 10]


def test_versions_and_availability(strategy, monkeypatch: pytest.MonkeyPatch):
    from importlib.metadata import version

    assert strategy.runtime_versions()["executorch"] == version("executorch")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("executorch") else real(name, *a))
    a = strategy.available()
    assert not a.ok and "pip install executorch==1.5.*" in a.reason


def test_open_does_not_import_the_compiler(strategy, artifacts):
    """A cell's cold start loads the runtime extension and the program, not executorch.exir (2.5 s)."""
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path\n"
        "import strategies; from fixtures.builtin import BUILTIN_MODELS\n"
        "from strategies.base import ModelHandle, SessionOptions\n"
        "s = strategies.get('executorch'); m = ModelHandle(BUILTIN_MODELS['mlp'], 0)\n"
        f"t = time.perf_counter(); session = s.open(m, Path({str(artifacts('mlp'))!r}), SessionOptions(1))\n"
        "session.run(m.example_inputs(2)); print(time.perf_counter() - t, 'executorch.exir' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    _seconds, exir = p.stdout.split()
    assert exir == "False", "open() imported executorch.exir"
