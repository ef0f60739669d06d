"""The C# gRPC client (clr-grpc, clr-grpc-uds) against the project's real grpcio server, on CoreCLR:
its hand-written protobuf against protoc's, every status path, and a server that goes away. Outputs
against eager torch on every built-in model are in test_strategies.py and the quick run."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.loading import build_model, run_eager
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import require_strategy


def _runner_for(session, model_name: str, deadline_s: float = 10.0):
    from strategies.clr.strategy import ClrSession

    return ClrSession._invoke(session._ib.GrpcRunner, session.server.address, model_name, deadline_s, session.server.max_bytes)


def _caller(ib, runner, names, arrays):
    from System import Array, Int64, String

    shapes = Array.CreateInstance(Array[Int64], len(arrays))
    for i, a in enumerate(arrays):
        shapes[i] = Array[Int64]([int(d) for d in a.shape])
    return runner.NewCaller(Array[String](names), Array[String]([a.dtype.name for a in arrays]), shapes,
                            Array[Int64]([a.ctypes.data for a in arrays]))


def test_request_bytes_are_protoc_s(tmp_path):
    require_strategy("clr-grpc")
    from strategies.grpc import stubs
    from strategies.shared import dotnet

    ib = dotnet.load("coreclr")
    from System import Array, Byte, Int64, String

    pb2, _ = stubs.load()
    spec = BUILTIN_MODELS["transformer"]  # int64 token ids and a float mask: two dtypes, two inputs
    x = ModelHandle(spec, 0).example_inputs(3)
    names = [t.name for t in spec.inputs]
    arrays = [np.ascontiguousarray(x[n]) for n in names]
    shapes = Array.CreateInstance(Array[Int64], len(arrays))
    raws = Array.CreateInstance(Array[Byte], len(arrays))
    for i, a in enumerate(arrays):
        shapes[i] = Array[Int64]([int(d) for d in a.shape])
        raws[i] = Array[Byte](a.tobytes())
    got = bytes(ib.GrpcRunner.EncodeRequestForTest(spec.name, Array[String](names),
                                                   Array[String]([a.dtype.name for a in arrays]), shapes, raws))
    datatype = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float64": "FP64", "bool": "BOOL"}
    expected = pb2.ModelInferRequest(
        model_name=spec.name,
        inputs=[pb2.ModelInferRequest.InferInputTensor(name=n, datatype=datatype[a.dtype.name], shape=list(a.shape))
                for n, a in zip(names, arrays)],
        raw_input_contents=[a.tobytes() for a in arrays])
    assert got == expected.SerializeToString()
    assert pb2.ModelInferRequest.FromString(got) == expected


@pytest.mark.parametrize("name", ["clr-grpc", "clr-grpc-uds"])
def test_breakdown_adds_up_and_the_server_s_phases_come_from_its_trailer(name: str):
    strategy = require_strategy(name)
    spec = BUILTIN_MODELS["mlp"]
    x = ModelHandle(spec, 0).example_inputs(4)
    expected = run_eager(build_model(spec, 0), spec, x)
    with strategy.open(ModelHandle(spec, 0), None, SessionOptions(1)) as session:
        np.testing.assert_allclose(session.run(x)["logits"], expected["logits"], atol=spec.atol, rtol=spec.rtol)
        t = session.time_calls(x, 40)
        parts = sum(t.phases_ns[p] for p in session.phases)
        assert (np.abs(parts - t.latency_ns) <= 2_000).all(), (parts[:5], t.latency_ns[:5])
        assert (t.phases_ns["server_compute"] > 0).all() and (t.phases_ns["transport"] > 0).all()
        d = session.describe()
        assert d["runtime"].startswith(".NET 8") and d["http/2 settings"]
        assert ("Unix domain socket" in d["transport"]) == name.endswith("uds")


def test_every_status_path_is_one_clear_error():
    strategy = require_strategy("clr-grpc")
    from strategies.clr.strategy import ClrSession

    spec = BUILTIN_MODELS["identity"]
    x = np.ascontiguousarray(ModelHandle(spec, 0).example_inputs(16 * 1024)["x"])  # 16 MiB
    with strategy.open(ModelHandle(spec, 0), None, SessionOptions(1)) as session:
        ib = session._ib
        # an error status from the server (in the trailers, or a Trailers-Only reply)
        wrong = _runner_for(session, "no-such-model")
        small = np.ascontiguousarray(x[:1])
        with pytest.raises(RuntimeError, match=r"gRPC NOT_FOUND \(5\): model 'no-such-model' is not served here"):
            ClrSession._invoke(_caller(ib, wrong, ["x"], [small]).CallOnce)
        wrong.Dispose()
        # a deadline the call cannot meet
        hurried = _runner_for(session, spec.name, deadline_s=0.0005)
        with pytest.raises(RuntimeError, match=r"DEADLINE_EXCEEDED"):
            ClrSession._invoke(_caller(ib, hurried, ["x"], [x]).CallOnce)
        hurried.Dispose()
        # the session's own runner is unaffected by the other runners' failures
        session.run({"x": small})
        # a server that went away: the address and the refusal, in one line
        address = session.server.address
        session.server.close()
        caller = session._caller({"x": small})
        with pytest.raises(RuntimeError) as err:
            ClrSession._invoke(caller.CallOnce)
        first = str(err.value).splitlines()[0]
        assert "UNAVAILABLE" in first or "refused" in first.lower() or "connection" in first.lower(), first
        assert address.removeprefix("unix:").split(":")[0] in str(err.value)
