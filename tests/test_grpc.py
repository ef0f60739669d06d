"""The gRPC strategies against a real server process on loopback (no mocked channel)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.results import RunDir
from fixtures.builtin import BUILTIN_MODELS
from fixtures.specs import make_inputs
from strategies.base import ModelHandle, SessionOptions
from strategies.grpc import codec, stubs
from strategies.grpc.server import SERVICE
from strategies.grpc.strategy import GrpcSession
from tests.conftest import FAST, bench_env, run_bench

MLP = BUILTIN_MODELS["mlp"]


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    port_file = tmp_path / f"port-{time.monotonic_ns()}.json"
    proc = subprocess.Popen([sys.executable, "-m", "strategies.grpc.server", "--port", "0", "--port-file", str(port_file),
                             *args], env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return proc, json.loads(port_file.read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server started by hand, as an operator would, with a 2 MiB message limit."""
    proc, info = start_server(tmp_path_factory.mktemp("srv"), "--model", "mlp", "--max-message-bytes", str(2 * 2**20))
    channel = grpc.insecure_channel(info["address"])
    pb2, services = stubs.load()
    yield proc, info, services.GRPCInferenceServiceStub(channel), pb2
    channel.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0  # graceful shutdown


def _valid(pb2, batch: int = 2):
    return codec.encode_request(pb2, make_inputs(MLP, batch, 0), codec.RAW, "mlp")


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_server_binds_loopback_and_reports_health(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, info, _, _ = server
    assert info["address"].startswith("127.0.0.1:")
    with grpc.insecure_channel(info["address"]) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_bad_requests_get_codes_and_the_server_keeps_serving(server):
    _, _, stub, pb2 = server
    x = make_inputs(MLP, 2, 0)["x"]
    cases = {
        "name": ({"features": x}, "missing ['x']"),
        "dtype": ({"x": x.astype(np.float64)}, "datatype FP64 but the model takes FP32"),
        "shape": ({"x": x[:, :100]}, "shape [2, 100] does not fit float32[batch,256]"),
        "rank": ({"x": x[0]}, "rank 1"),
    }
    for what, (arrays, fragment) in cases.items():
        code, details = _code(lambda a=arrays: stub.ModelInfer(codec.encode_request(pb2, a, codec.RAW, "mlp"), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, (what, code, details)
    req = _valid(pb2)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    code, details = _code(lambda: stub.ModelInfer(req, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes for shape" in details
    req = _valid(pb2)
    req.parameters["encoding"].string_param = "pickle"
    assert _code(lambda: stub.ModelInfer(req, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
    bad_json = codec.encode_request(pb2, {"x": x}, codec.JSON, "mlp")
    bad_json.inputs[0].contents.bytes_contents[0] = b"__import__('os').system('true')"
    code, details = _code(lambda: stub.ModelInfer(bad_json, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a JSON list" in details
    deep = codec.encode_request(pb2, {"x": x}, codec.JSON, "mlp")
    deep.inputs[0].contents.bytes_contents[0] = b"[" * 100_000 + b"]" * 100_000
    code, details = _code(lambda: stub.ModelInfer(deep, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nested too deeply" in details, details
    huge = _valid(pb2)
    del huge.inputs[0].shape[:]
    huge.inputs[0].shape.extend([0, 2**62])
    huge.raw_input_contents[0] = b""
    code, details = _code(lambda: stub.ModelInfer(huge, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot be an array" in details, details
    code, _ = _code(lambda: stub.ModelInfer(codec.encode_request(pb2, {"x": x}, codec.RAW, "resnet"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: stub.ModelInfer(_valid(pb2, batch=2048), timeout=10))  # 2 MiB + framing > limit
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # still serving, and right
    resp = stub.ModelInfer(_valid(pb2), timeout=10)
    out = codec.decode(resp.outputs, resp.raw_output_contents, codec.RAW)
    assert out["logits"].shape == (2, 10)


def test_known_request_metadata_does_not_skip_the_checks(server):
    """The server skips parsing metadata it validated before; the data must still fit it exactly."""
    _, _, stub, pb2 = server
    for _ in range(2):
        stub.ModelInfer(_valid(pb2), timeout=10)  # learned, then served by the fast path
    for what, edit, fragment in (
        ("short", lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4]), "bytes for shape"),
        ("long", lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0] + b"\0" * 4), "bytes for shape"),
        ("extra tensor", lambda r: r.raw_input_contents.append(b"\0" * 8), "1 tensors but 2 raw contents"),
        ("no data", lambda r: r.ClearField("raw_input_contents"), "1 tensors but 0 raw contents"),
    ):
        req = _valid(pb2)
        edit(req)
        code, details = _code(lambda r=req: stub.ModelInfer(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, (what, code, details)
    resp = stub.ModelInfer(_valid(pb2), timeout=10)
    assert codec.decode(resp.outputs, resp.raw_output_contents, codec.RAW)["logits"].shape == (2, 10)


def test_layout_writes_what_protobuf_writes_and_reads_it_back():
    pb2, _ = stubs.load()
    arrays = {"ids": np.arange(12, dtype=np.int64).reshape(2, 6), "mask": np.ones((2, 6), np.int64),
              "x": np.linspace(-1, 1, 2 * 300, dtype=np.float32).reshape(2, 300)}
    layouts = codec.Layouts(codec.REQUEST_RAW_FIELD, codec.REQUEST_RAW_FIELD)
    header = codec.request_message(pb2, arrays, codec.RAW, "m").SerializeToString()
    data = layouts.writer(arrays, lambda arrays, extra: header).write(arrays.values())
    assert data == codec.encode_request(pb2, arrays, codec.RAW, "m").SerializeToString()
    assert layouts.read(data)[0] is None  # not learned yet: the caller parses and checks
    meta, raw = codec.split(data, codec.REQUEST_RAW_FIELD)
    layouts.learn(meta, codec.decode(codec.parse_message(pb2.ModelInferRequest, meta).inputs, raw, codec.RAW))
    for _ in range(2):  # by metadata look-up, then by the previous message's layout
        layout, got, _ = layouts.read(data)
        assert layout is not None and list(got) == list(arrays)
        for k in arrays:
            np.testing.assert_array_equal(got[k], arrays[k])
            assert got[k].dtype == arrays[k].dtype
    other = {**arrays, "x": arrays["x"][:, :299]}
    assert layouts.read(codec.encode_request(pb2, other, codec.RAW, "m").SerializeToString())[0] is None
    # arrays that are not C-contiguous or not little-endian take the copying path, and write the same bytes
    strided = np.zeros((2, 600), np.float32)
    strided[:, ::2] = arrays["x"]
    awkward = {"ids": np.asfortranarray(arrays["ids"]), "mask": arrays["mask"].astype(">i8"), "x": strided[:, ::2]}
    assert not awkward["ids"].flags.c_contiguous and not awkward["x"].flags.c_contiguous
    written = codec.Layouts(codec.REQUEST_RAW_FIELD, codec.REQUEST_RAW_FIELD).writer(
        awkward, lambda arrays, extra: codec.request_message(pb2, arrays, codec.RAW, "m").SerializeToString())
    assert written.write(awkward.values()) == data


def test_metadata_describes_the_model(server):
    _, info, stub, pb2 = server
    m = stub.ModelMetadata(pb2.ModelMetadataRequest(name="mlp"), timeout=10)
    assert m.name == "mlp" and m.inputs[0].datatype == "FP32" and list(m.inputs[0].shape) == [-1, 256]
    assert m.content_hash == info["content_hash"] and m.outputs[0].name == "logits"


def test_killed_server_fails_the_call_within_the_deadline():
    session = GrpcSession(ModelHandle(MLP, 0), SessionOptions(1, 1, {"deadline_s": 3.0}), codec.RAW, "tcp")
    try:
        x = make_inputs(MLP, 1, 0)
        session.run(x)
        assert session.last_phases_ns()["server_compute"] > 0
        session.server.kill()
        session.server.wait()
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as info:
            session.run(x)
        assert time.monotonic() - t0 < 4.5
        # the first line says the server died and how, with its last log line, then what the call got
        first = str(info.value).splitlines()[0]
        assert first.startswith(f"the gRPC server (pid {session.server.pid}) was killed by signal SIGKILL; its last log line: serving mlp"), first
        assert first.endswith(("the call got UNAVAILABLE", "the call got DEADLINE_EXCEEDED")), first
        assert isinstance(info.value.__cause__, grpc.RpcError)
    finally:
        session.close()


def test_an_unreachable_remote_target_fails_in_seconds(tmp_path: Path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        GrpcSession(ModelHandle(MLP, 0), SessionOptions(1, 1, {"target": f"127.0.0.1:{port}"}), codec.RAW, "tcp")
    assert time.monotonic() - t0 < 15
    assert f"gRPC server at 127.0.0.1:{port} not SERVING within 10s" in str(info.value).splitlines()[0]


def test_server_dies_with_its_client(tmp_path: Path):
    """The worker (client) is SIGKILLed: its server goes too (parent-death signal)."""
    import psutil

    code = ("from strategies.grpc.strategy import GrpcSession; from strategies.base import ModelHandle, SessionOptions; "
            "from fixtures.builtin import BUILTIN_MODELS; import time; "
            "s = GrpcSession(ModelHandle(BUILTIN_MODELS['identity'], 0), SessionOptions(1), 'raw', 'tcp'); "
            "print(s.server.pid, flush=True); time.sleep(600)")
    client = subprocess.Popen([sys.executable, "-c", code], env=bench_env(), stdout=subprocess.PIPE, text=True)
    server_pid = int(client.stdout.readline())
    assert psutil.pid_exists(server_pid)
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "server outlived its client"
        time.sleep(0.05)


def test_run_with_remote_target_and_server_killed_mid_cell(tmp_path: Path):
    proc, info = start_server(tmp_path, "--model", "mlp")
    try:
        p = run_bench("run", "--plugin", "tests.plugins.faulty", "--models", "mlp", "--strategies",
                      "grpc,grpc-naive,grpc-dies-test,torch", "--grpc-target", info["address"], "--batch-sizes", "2",
                      "--concurrency", "1", "--payload-sizes", "none", "--out", str(tmp_path), "--run-id", "r", *FAST,
                      cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    cells = {r.cell.strategy: r for r in RunDir(tmp_path / "r").load_cells()}
    for s in ("grpc", "grpc-naive"):
        assert cells[s].status == "ok", cells[s].error
        assert cells[s].session["remote"] and info["address"] in cells[s].session["transport"]
        assert len(cells[s].memory.processes) == 1  # the remote server is not ours to measure
    dead = cells["grpc-dies-test"]
    # the first line says the server died and how, then what the call got
    assert dead.status == "error" and "UNAVAILABLE" in dead.error, dead.error
    assert "the gRPC server (pid" in dead.error and "was killed by signal SIGKILL" in dead.error, dead.error
    assert dead.wall_s < 60
    assert cells["torch"].status == "ok"
    html = (tmp_path / "r" / "report.html").read_text()
    assert f"remote server {info['address']}" in html


def test_remote_server_with_other_weights_is_refused(tmp_path: Path):
    proc, info = start_server(tmp_path, "--model", "mlp", "--seed", "1")
    try:
        with pytest.raises(RuntimeError, match="not this run's 'mlp'"):
            GrpcSession(ModelHandle(MLP.with_outputs(("logits",)), 0, _probe_hash()),
                        SessionOptions(1, 1, {"target": info["address"]}), codec.RAW, "tcp")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _probe_hash() -> str:
    from fixtures.loading import build_model, model_content_hash

    return model_content_hash(build_model(MLP, 0), MLP, 0)


def test_grpc_cells_report_breakdown_and_server_memory(quick_run: Path):
    cells = [r for r in RunDir(quick_run).load_cells(samples=False) if r.cell.strategy.startswith("grpc")]
    assert {r.cell.strategy for r in cells} == {"grpc", "grpc-naive", "grpc-uds"}
    for r in cells:
        assert r.status == "ok", (r.cell.id, r.error)
        procs = r.memory.processes
        assert [p.role for p in procs] == ["worker", "grpc server"] and procs[1].peak > 50 * 2**20
        if r.cell.concurrency == 1 and r.cell.scenario in ("latency", "payload"):  # (shapes keeps no phases)
            ph = r.phases
            assert set(ph) == set(GrpcSession.phases) and ph["server_compute"].p50 > 0
    html = (quick_run / "report.html").read_text()
    assert "<section id=breakdown>" in html and "server_compute" in html
    libtorch = [r for r in RunDir(quick_run).load_cells(samples=False)
                if r.cell.strategy.startswith("libtorch") and r.cell.concurrency == 1
                and r.cell.scenario == "latency"]
    assert libtorch and all(set(r.phases) == {"marshal_in", "compute", "marshal_out"} for r in libtorch)


def test_stubs_generate_from_the_proto(tmp_path: Path):
    stubs.generate(tmp_path / "stubs")
    text = (tmp_path / "stubs" / "interop_inference_pb2_grpc.py").read_text()
    assert "def ModelInfer" in text and "def ModelMetadata" in text


def test_layout_caches_never_keep_large_client_strings():
    """The request id is a client's string: distinct ids of a MiB each go the slow way every time and
    are never cached, so a server's memory does not grow with them; small ids are cached as before."""
    pb2, _ = stubs.load()
    arrays = {"x": np.ones((2, 256), np.float32)}
    layouts = codec.Layouts(codec.REQUEST_RAW_FIELD, codec.RESPONSE_RAW_FIELD)
    for i in range(100):
        request = codec.encode_request(pb2, arrays, codec.RAW, "mlp")
        request.id = f"{i:04d}" + "x" * (1 << 20)
        data = request.SerializeToString()
        assert layouts.read(data)[0] is None
        meta, _ = codec.split(data, codec.REQUEST_RAW_FIELD)
        layouts.learn(meta, arrays, request.id)
        assert layouts.read(data)[0] is None  # still the slow way: never cached
        layouts.writer(arrays, lambda a, extra, r=request: r.SerializeToString(), request.id)
    assert layouts.cached_bytes() == 0
    data = codec.encode_request(pb2, arrays, codec.RAW, "mlp").SerializeToString()
    meta, _ = codec.split(data, codec.REQUEST_RAW_FIELD)
    layouts.learn(meta, arrays)
    assert layouts.read(data)[0] is not None  # an ordinary request's layout is cached as before
    assert 0 < layouts.cached_bytes() <= codec.Layouts.MAX_KEY_BYTES


def _stalled_calls(address: str, n: int):
    """n calls that send their headers and then nothing (a client that stalls before its message):
    a stream-unary call whose request iterator blocks until released."""
    import threading

    release = threading.Event()

    def never():
        release.wait()
        return
        yield  # a generator that yields nothing until released

    channels = [grpc.insecure_channel(address) for _ in range(n)]
    futures = [ch.stream_unary(f"/{SERVICE}/ModelInfer").future(never(), timeout=120) for ch in channels]
    return release, channels, futures


@pytest.mark.parametrize("kind", ["asyncio"])
def test_stalled_clients_do_not_block_other_callers(tmp_path: Path, kind: str):
    """Twice as many stalled calls as the server has workers: a well-behaved call and the health check
    are still answered at once (grpcio's threaded server, --server sync, gives each stalled call a worker)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, info = start_server(tmp_path, "--model", "mlp", "--workers", "4", "--server", kind)
    release, channels, futures = _stalled_calls(info["address"], 8)
    try:
        time.sleep(1.0)  # the stalled calls are open on the server
        ch = grpc.insecure_channel(info["address"])
        pb2, services = stubs.load()
        t0 = time.monotonic()
        r = services.GRPCInferenceServiceStub(ch).ModelInfer(_valid(pb2), timeout=5)
        assert r.outputs and time.monotonic() - t0 < 5
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        ch.close()
        assert not any(f.done() for f in futures)  # the stalled ones are still open: nothing was cut short
    finally:
        release.set()
        for c in channels:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_a_cap_on_calls_refuses_the_excess_and_serves_the_rest(tmp_path: Path):
    """--max-calls 2 and eight callers at once of a model that takes 0.3 s: six are refused with
    RESOURCE_EXHAUSTED (saying so), the two admitted are answered, and then a call is served again."""
    import concurrent.futures

    proc, info = start_server(tmp_path, "--model", "slow", "--model-factory", "tests.byom_models:make_slow",
                              "--model-inputs", "x:float32[batch,4]", "--workers", "8", "--max-calls", "2")
    try:
        pb2, services = stubs.load()
        request = codec.encode_request(pb2, {"x": np.ones((1, 4), np.float32)}, codec.RAW, "slow")
        chans = [grpc.insecure_channel(info["address"]) for _ in range(8)]

        def call(ch):
            try:
                services.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30)
                return "OK"
            except grpc.RpcError as e:
                return f"{e.code().name}: {e.details()}"

        for ch in chans:  # connected before the burst, so the eight calls arrive together
            grpc.channel_ready_future(ch).result(timeout=10)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(call, chans))
        refused = [o for o in outcomes if o.startswith("RESOURCE_EXHAUSTED")]
        assert outcomes.count("OK") >= 2 and len(refused) >= 4, outcomes
        assert "server busy" in refused[0] and "caps 2 calls" in refused[0]
        assert set(outcomes) <= {"OK", *refused}, outcomes
        assert call(chans[0]) == "OK"  # released: served again
        for c in chans:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
