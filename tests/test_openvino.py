"""The openvino strategy through the real OpenVINO Runtime: IR artifacts, the settings the compiled
model really runs with, zero-copy inputs, copied outputs, per-thread infer requests, one-line failures.
(Outputs against eager torch on every model, batch 1/3/17 and 4 callers: tests/test_strategies.py.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.custom import make_custom_model
from fixtures.specs import parse_input_spec
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import require_strategy


@pytest.fixture(scope="module")
def strategy():
    return require_strategy("openvino")


@pytest.fixture(scope="module")
def identity(strategy, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelHandle, Path]:
    d = tmp_path_factory.mktemp("openvino-identity")
    handle = ModelHandle(BUILTIN_MODELS["identity"], 0)
    strategy.prepare(handle, d)
    return handle, d


def test_prepare_writes_fp32_ir_with_dynamic_batch(strategy, tmp_path: Path):
    import openvino as ov

    strategy.prepare(ModelHandle(BUILTIN_MODELS["cnn"], 0), tmp_path)
    assert (tmp_path / "model.xml").is_file() and (tmp_path / "model.bin").is_file()
    assert not list(tmp_path.glob("*.onnx*"))  # the intermediate export is not cached twice
    model = ov.Core().read_model(str(tmp_path / "model.xml"))
    assert [str(p.get_partial_shape()) for p in model.inputs] == ["[?,3,32,32]"]  # batch dynamic, rest static
    assert [p.get_element_type().get_type_name() for p in model.inputs] == ["f32"]
    assert "f16" not in {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                         if op.get_type_name() == "Constant"}  # save_model did not compress weights


@pytest.mark.parametrize(("threads", "callers", "hint"),
                         [(1, 1, "LATENCY"), (2, 1, "LATENCY"), (1, 2, "THROUGHPUT"), (1, 4, "THROUGHPUT"),
                          (2, 4, "THROUGHPUT")])
def test_settings_applied_are_read_back(strategy, identity, threads, callers, hint):
    """One caller: one stream of the cell's threads. N callers: as with the other runtimes, each gets
    the cell's threads at once (N streams), up to what the CPU plugin allows (one per core)."""
    cores = os.cpu_count() or 1
    streams = 1 if callers == 1 else min(callers, cores)
    threads = threads if callers == 1 else min(threads * callers, cores)
    handle, d = identity
    with strategy.open(handle, d, SessionOptions(threads, callers)) as session:
        c = session.compiled
        assert str(c.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1] == hint
        assert int(c.get_property("NUM_STREAMS")) == streams
        assert int(c.get_property("INFERENCE_NUM_THREADS")) == threads
        assert c.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"  # not the bf16 default
        facts = session.describe()
        assert (facts["hint"], facts["streams"], facts["threads"]) == (hint, streams, threads)


def test_inputs_shared_outputs_copied(strategy, identity):
    handle, d = identity
    with strategy.open(handle, d, SessionOptions(1)) as session:
        x = handle.example_inputs(1024)  # 1 MiB
        y = session.run(x)["y"]
        # the request reads the caller's NumPy buffer itself, no copy in
        assert np.shares_memory(session.request().get_input_tensor(0).data, x["x"])
        np.testing.assert_array_equal(y, x["x"])
        # the output is the caller's: the same thread's next call does not overwrite it
        kept = y.copy()
        assert not np.shares_memory(y, session.request().get_output_tensor(0).data)
        session.run({"x": -x["x"]})
        np.testing.assert_array_equal(y, kept)


def test_one_infer_request_per_calling_thread(strategy, identity):
    handle, d = identity
    cases = [ModelHandle(handle.spec, seed).example_inputs(8) for seed in range(4)]
    seen: dict[int, int] = {}
    errors: list[str] = []
    with strategy.open(handle, d, SessionOptions(1, 4)) as session:
        def caller(i: int) -> None:
            for _ in range(50):
                if not np.array_equal(session.run(cases[i])["y"], cases[i]["x"]):
                    errors.append(f"caller {i} got another caller's output")
                    return
            seen[i] = id(session.request())

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(set(seen.values())) == 4 and len(session._requests) == 4


def test_conversion_failure_names_cause_in_one_line(strategy, tmp_path: Path):
    """A data-dependent branch must fail the conversion (tracing would silently keep one branch)."""
    spec = make_custom_model("dd", "tests.byom_models:make_data_dependent", parse_input_spec("x:float32[batch,4]"), ("y",))
    with pytest.raises(RuntimeError) as info:
        strategy.prepare(ModelHandle(spec, 0), tmp_path)
    msg = str(info.value)
    assert msg.startswith("OpenVINO: ONNX export failed (TorchExportError): GuardOnDataDependentSymNode"), msg
    assert "byom_models.py" in msg and "if x.sum() > 0" in msg and "\x1b" not in msg and "\n" not in msg
    assert not (tmp_path / "model.xml").exists()


def test_openvino_error_kept_to_one_line(strategy, tmp_path: Path):
    import openvino as ov

    from strategies.openvino.strategy import conversion_failure

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeError) as info:
        ov.Core().read_model(str(bad))
    assert "\n" in str(info.value)  # OpenVINO's own text spans lines
    msg = str(conversion_failure(info.value, "conversion"))
    assert msg.startswith("OpenVINO conversion failed (RuntimeError): Unable to read the model"), msg
    assert "\n" not in msg and "Exception from src" not in msg


def test_versions_describe_and_cache_key(strategy, identity):
    import openvino as ov

    assert strategy.runtime_versions()["openvino"] == ov.__version__.split("-")[0]
    handle, d = identity
    with strategy.open(handle, d, SessionOptions(1)) as session:
        facts = session.describe()
    assert facts["openvino"] == ov.get_version() and facts["dynamic_batch"] is True
    assert "ONNX" in facts["source"] and "copied" in facts["outputs"]
    # the artifact comes from the ONNX Runtime routes' shared export, so the exporter is in the key
    from strategies.shared.onnx_export import exporter_id

    assert strategy.runtime_versions()["onnx export"] == exporter_id()
    assert facts["source"].endswith(("dynamo exporter", "torchscript exporter"))


def test_unavailable_says_what_to_install(strategy, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    a = strategy.available()
    assert not a.ok and "pip install openvino" in a.reason
