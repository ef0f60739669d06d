"""Every registered strategy against eager torch, on every built-in model and a bring-your-own
model, through the real runtimes. In CI an unavailable strategy fails; elsewhere it skips."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import strategies
from fixtures.builtin import BUILTIN_MODELS
from fixtures.custom import make_custom_model
from fixtures.loading import build_model, run_eager
from fixtures.specs import parse_input_spec
from strategies.base import ModelHandle, SessionOptions
from tests.byom_models import TWO_INPUT_SPEC
from tests.conftest import IN_CI, require_strategy

STRATEGIES = strategies.names()
BYOM = make_custom_model("two_inputs", "tests.byom_models:make_two_inputs", parse_input_spec(TWO_INPUT_SPEC),
                         ("score", "norm"))
MODELS = {**BUILTIN_MODELS, BYOM.name: BYOM}




@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[tuple[str, str], Path | None] = {}

    def get(strategy: strategies.Strategy, model: str) -> Path | None:
        key = (strategy.name, model)
        if key not in cache:
            if strategy.needs_artifacts:
                d = tmp_path_factory.mktemp(f"{strategy.name}-{model}")
                strategy.prepare(ModelHandle(MODELS[model], 0), d)
                cache[key] = d
            else:
                cache[key] = None
        return cache[key]

    return get


def test_built_in_strategies_registered():
    assert {"torch", "onnxruntime"} <= set(STRATEGIES)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", STRATEGIES)
def test_outputs_match_eager_torch(name: str, model: str, artifacts):
    strategy = require_strategy(name)
    spec = MODELS[model]
    eager = build_model(spec, 0)
    art = artifacts(strategy, model)
    with strategy.open(ModelHandle(spec, 0), art, SessionOptions(threads=1)) as session:
        for batch in (1, 3, 17):  # the batch dimension really is dynamic
            handle = ModelHandle(spec, 0)
            inputs = handle.example_inputs(batch)
            expected = run_eager(eager, spec, inputs)
            got = session.run(inputs)
            assert set(got) == set(expected), f"output names {sorted(got)} != {sorted(expected)}"
            for k, e in expected.items():
                assert got[k].shape == e.shape and got[k].dtype == e.dtype, k
                np.testing.assert_allclose(got[k], e, atol=spec.atol, rtol=spec.rtol, err_msg=f"{name}/{model}/{k}")


@pytest.mark.parametrize("name", STRATEGIES)
def test_concurrent_calls_stay_correct(name: str, artifacts):
    strategy = require_strategy(name)
    if not strategy.concurrent_calls:
        pytest.skip(f"{name} does not allow concurrent calls")
    spec = MODELS["transformer"]
    eager = build_model(spec, 0)
    cases = [ModelHandle(spec, seed).example_inputs(2) for seed in range(4)]
    expected = [run_eager(eager, spec, x) for x in cases]
    errors: list[str] = []
    with strategy.open(ModelHandle(spec, 0), artifacts(strategy, "transformer"), SessionOptions(1, 4)) as session:
        def caller(i: int) -> None:
            for _ in range(20):
                got = session.run(cases[i])
                if not np.allclose(got["pooled"], expected[i]["pooled"], atol=spec.atol, rtol=spec.rtol):
                    errors.append(f"caller {i} got another caller's or a wrong result")
                    return

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_onnxruntime_runs_without_copies(artifacts):
    """Inputs wrap the NumPy buffer and outputs view ONNX Runtime's memory."""
    strategy = require_strategy("onnxruntime")
    spec = MODELS["identity"]
    with strategy.open(ModelHandle(spec, 0), artifacts(strategy, "identity"), SessionOptions(1)) as session:
        x = ModelHandle(spec, 0).example_inputs(8)
        y = session.run(x)["y"]
        assert not y.flags.owndata  # a view of the OrtValue, kept alive by the array
        np.testing.assert_array_equal(y, x["x"])


def test_onnx_export_failure_names_cause(tmp_path: Path):
    """A model torch.export cannot trace (data-dependent branch) fails with a one-line cause."""
    strategy = require_strategy("onnxruntime")
    spec = make_custom_model("dd", "tests.byom_models:make_data_dependent", parse_input_spec("x:float32[batch,4]"), ("y",))
    with pytest.raises(RuntimeError) as info:
        strategy.prepare(ModelHandle(spec, 0), tmp_path)
    msg = str(info.value)
    assert msg.startswith("ONNX export failed (TorchExportError): GuardOnDataDependentSymNode"), msg
    assert "byom_models.py" in msg and "if x.sum() > 0" in msg and "\x1b" not in msg and "\n" not in msg


def test_availability_in_ci():
    for name in STRATEGIES:
        a = strategies.get(name).available()
        if IN_CI:
            assert a.ok, f"{name} unavailable in CI: {a.reason}"
        elif not a.ok:
            assert a.reason, f"{name} is unavailable without saying why"
