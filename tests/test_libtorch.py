"""The LibTorch strategies' C++ extension, really compiled against the installed torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import strategies
from fixtures.builtin import BUILTIN_MODELS
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import require_strategy


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[tuple[str, str], Path] = {}

    def get(strategy: str, model: str) -> tuple[strategies.Strategy, Path]:
        s = require_strategy(strategy)
        if (strategy, model) not in cache:
            d = tmp_path_factory.mktemp(f"{strategy}-{model}")
            s.prepare(ModelHandle(BUILTIN_MODELS[model], 0), d)
            cache[(strategy, model)] = d
        return s, cache[(strategy, model)]

    return get


def test_torchscript_identity_is_zero_copy_both_ways(prepared):
    s, art = prepared("libtorch-ts", "identity")
    spec = BUILTIN_MODELS["identity"]
    with s.open(ModelHandle(spec, 0), art, SessionOptions(1)) as session:
        x = ModelHandle(spec, 0).example_inputs(8)
        y = session.run(x)["y"]
        runner = session.runner
        # the model received the caller's buffer, and what came back is that same memory
        assert runner.last_input_ptrs() == [x["x"].ctypes.data]
        assert runner.last_output_ptrs() == [x["x"].ctypes.data] == [y.ctypes.data]
        assert y.base is x["x"]  # the output keeps the input it aliases alive
        np.testing.assert_array_equal(y, x["x"])


@pytest.mark.parametrize("strategy", ["libtorch-ts", "libtorch-aoti"])
def test_inputs_reach_the_model_and_outputs_view_the_tensor(prepared, strategy: str):
    s, art = prepared(strategy, "mlp")
    spec = BUILTIN_MODELS["mlp"]
    with s.open(ModelHandle(spec, 0), art, SessionOptions(1)) as session:
        x = ModelHandle(spec, 0).example_inputs(4)
        out = session.run(x)["logits"]
        assert session.runner.last_input_ptrs() == [x["x"].ctypes.data]  # no copy in
        assert session.runner.last_output_ptrs() == [out.ctypes.data]  # no copy out
        assert type(out.base).__name__ == "PyCapsule"  # the array owns the tensor, not a copy of it
        first = out.copy()
        del session  # the array outlives the session and its call
        np.testing.assert_array_equal(out, first)
        phases = s.open(ModelHandle(spec, 0), art, SessionOptions(1))
        phases.run(x)
        assert set(phases.last_phases_ns()) == {"marshal_in", "compute", "marshal_out"}
        assert phases.last_phases_ns()["compute"] > 0


def test_cpp_exceptions_become_python_exceptions(prepared, tmp_path: Path):
    s, art = prepared("libtorch-ts", "mlp")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.ts.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(RuntimeError, match="PytorchStreamReader|archive|zip"):
        s.open(ModelHandle(BUILTIN_MODELS["mlp"], 0), bad, SessionOptions(1))
    spec = BUILTIN_MODELS["mlp"]
    with s.open(ModelHandle(spec, 0), art, SessionOptions(1)) as session:
        with pytest.raises(RuntimeError, match="mat1 and mat2|size"):
            session.run({"x": np.zeros((2, 7), np.float32)})  # wrong shape, from inside LibTorch
        with pytest.raises(ValueError, match="not C-contiguous"):
            session.run({"x": np.zeros((256, 2), np.float32).T})
        assert session.run(ModelHandle(spec, 0).example_inputs(1))["logits"].shape == (1, 10)  # still usable


def test_aoti_export_failure_names_the_exporter(tmp_path: Path):
    from fixtures.custom import make_custom_model
    from fixtures.specs import parse_input_spec

    s = require_strategy("libtorch-aoti")
    spec = make_custom_model("dd", "tests.byom_models:make_data_dependent", parse_input_spec("x:float32[batch,4]"), ("y",))
    with pytest.raises(Exception, match="data-dependent|GuardOnDataDependent"):
        s.prepare(ModelHandle(spec, 0), tmp_path)
