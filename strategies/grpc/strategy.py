"""Client side of the gRPC strategies: starts the server process (or reaches a remote one), one
channel per cell, a deadline on every call, and a per-call breakdown from the server's trailing
metadata: client encode, transport (network, HTTP/2 framing, queueing), server decode, compute,
server encode, client decode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from strategies import register
from strategies.base import (
    Arrays,
    Availability,
    CliFlag,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)
from strategies.grpc import codec
from strategies.grpc.server import TIMING_KEY

BASE_DEADLINE_S = 10.0  # per call, plus 1 s per MB sent and received: slow is allowed, hung is not
STARTUP_TIMEOUT_S = 120.0
REMOTE_TIMEOUT_S = 10.0  # a server started elsewhere is already up: one that does not answer by then is not there
SERVER_MODULE = "strategies.grpc.server"


class ServerStartError(RuntimeError):
    pass


class GrpcSession(Session):
    phases = ("client_encode", "transport", "server_decode", "server_compute", "server_encode", "client_decode")

    def __init__(self, model: ModelHandle, options: SessionOptions, encoding: str, transport: str) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from strategies.grpc import stubs
        from strategies.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, SERVICE, message_options

        self.grpc = grpc
        self.pb2, services = stubs.load()
        self.encoding, self.transport = encoding, transport
        self.spec = model.spec
        s = options.settings
        self.fixed_deadline = float(s["deadline_s"]) if "deadline_s" in s else None
        self.max_bytes = int(s.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        self.server: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.target = s.get("target") if transport == "tcp" else None
        self._phases: dict[str, int] = {}
        self.layouts = codec.Layouts(codec.RESPONSE_RAW_FIELD, codec.REQUEST_RAW_FIELD)
        try:
            address = self.target or self._start_server(model, options)
            self.address = address
            self.channel = grpc.insecure_channel(address, options=message_options(self.max_bytes))
            wait = float(s.get("startup_timeout_s", REMOTE_TIMEOUT_S if self.target else STARTUP_TIMEOUT_S))
            self._wait_ready(health_pb2, health_pb2_grpc.HealthStub(self.channel), wait)
            stub = services.GRPCInferenceServiceStub(self.channel)
            meta = stub.ModelMetadata(self.pb2.ModelMetadataRequest(name=model.spec.name), timeout=BASE_DEADLINE_S)
            if model.content_hash and meta.content_hash != model.content_hash:
                raise RuntimeError(f"the server at {address} serves model {meta.name!r} (content hash {meta.content_hash}), "
                                   f"not this run's {model.spec.name!r} ({model.content_hash}); start it with the same "
                                   "model and seed")
            # bytes in, bytes out: codec.Layouts does the protobuf framing, one copy per tensor out, none in
            self.infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
        except BaseException:
            self.close()
            raise

    def _start_server(self, model: ModelHandle, options: SessionOptions) -> str:
        from plumbing.cache import temp_dir
        self.tmp = temp_dir("grpc-server")  # the server's socket, port file and log; swept if this worker dies
        spec_file, port_file, log = self.tmp / "spec.json", self.tmp / "port.json", self.tmp / "server.log"
        spec_file.write_text(json.dumps(model.spec.to_json()))
        cmd = [sys.executable, "-m", SERVER_MODULE, "--model-spec", str(spec_file), "--seed", str(model.seed),
               "--threads", str(options.threads), "--workers", str(max(4, 2 * options.concurrency)),
               "--max-message-bytes", str(self.max_bytes), "--port-file", str(port_file), "--die-with-parent",
               "--server", str(options.settings.get("server", DEFAULT_SERVER_KIND))]
        cmd += ["--uds", str(self.tmp / "grpc.sock")] if self.transport == "uds" else ["--host", "127.0.0.1", "--port", "0"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path[1:], env.get("PYTHONPATH", "")])
        with open(log, "wb") as f:
            # No preexec_fn: Python code between fork and exec runs gRPC's fork handlers in the child of a
            # process with live channels (a server start then aborted in epoll_wait); --die-with-parent
            # sets the parent-death signal in the server itself, and the cell's process group is killed
            # at its end whatever happens.
            self.server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + float(options.settings.get("startup_timeout_s", STARTUP_TIMEOUT_S))
        while not port_file.exists():
            if self.server.poll() is not None:
                raise ServerStartError(f"gRPC server exited with status {self.server.returncode} before serving: "
                                       + " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:]))
            if time.monotonic() > deadline:
                raise ServerStartError("gRPC server did not start within its startup timeout")
            time.sleep(0.02)
        return json.loads(port_file.read_text())["address"]

    def _wait_ready(self, health_pb2, health, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except self.grpc.RpcError as e:
                last = e
            time.sleep(0.05)
        detail = f": {last.code().name} {last.details()}" if isinstance(last, self.grpc.RpcError) else ""
        raise ServerStartError(f"gRPC server at {getattr(self, 'address', '?')} not SERVING within {timeout_s:.0f}s{detail}")

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        clock = time.perf_counter_ns
        t0 = clock()
        if self.encoding == codec.RAW:
            # the tensor metadata only changes with names, dtypes and shapes: serialized once
            request = self.layouts.writer(inputs, self._request_header).write(inputs.values())
        else:
            request = self._request_header(inputs)
        t1 = clock()
        try:
            data, call = self.infer.with_call(request, timeout=self.deadline(len(request)))
        except self.grpc.RpcError as e:
            died = self._server_death()
            if died:  # the first line says what happened, not only that the call failed
                raise RuntimeError(f"{died}; the call got {e.code().name}") from e
            raise
        t2 = clock()
        if self.encoding == codec.RAW:
            layout, outputs, (meta, raw_out) = self.layouts.read(data)
        else:
            layout, outputs, (meta, raw_out) = None, None, codec.split(data, codec.RESPONSE_RAW_FIELD)
        if layout is None:
            response = codec.parse_message(self.pb2.ModelInferResponse, meta)
            outputs = codec.decode(response.outputs, raw_out, self.encoding)
            if self.encoding == codec.RAW:
                self.layouts.learn(meta, outputs)
        t3 = clock()
        timing = dict(call.trailing_metadata() or ()).get(TIMING_KEY, "0,0,0")
        server = dict(zip(("decode", "compute", "encode"), map(int, timing.split(","))))
        self._phases = {
            "client_encode": t1 - t0, "transport": max(0, t2 - t1 - sum(server.values())),
            "server_decode": server["decode"], "server_compute": server["compute"], "server_encode": server["encode"],
            "client_decode": t3 - t2,
        }
        return outputs

    def _request_header(self, inputs: Arrays, extra=None) -> bytes:
        """The request without its raw contents (for JSON, the whole request)."""
        return codec.request_message(self.pb2, dict(inputs), self.encoding, self.spec.name).SerializeToString()

    def deadline(self, request_bytes: int) -> float:
        """The call's deadline: the configured one, or 10 s + 1 s per MB each way, so a slow naive
        encoding of a large payload completes while a hung server fails the cell."""
        return self.fixed_deadline or BASE_DEADLINE_S + 2 * request_bytes / 1e6

    def last_phases_ns(self) -> dict[str, int]:
        return self._phases

    def _server_death(self) -> str:
        """'the gRPC server (pid N) died with signal SIGKILL; its last log line: ...' once it has exited."""
        if self.server is None:
            return ""
        try:
            rc = self.server.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return ""
        how = f"was killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        last = ""
        if self.tmp is not None and (self.tmp / "server.log").exists():
            lines = (self.tmp / "server.log").read_text(errors="replace").strip().splitlines()
            last = f"; its last log line: {lines[-1][:200]}" if lines else ""
        return f"the gRPC server (pid {self.server.pid}) {how}{last}"

    def pids(self) -> list[tuple[int, str]]:
        return [(self.server.pid, "grpc server")] if self.server else []

    def describe(self) -> dict[str, Any]:
        where = f"remote server {self.target}" if self.target else (
            "Unix domain socket" if self.transport == "uds" else "TCP loopback 127.0.0.1")
        return {"transport": where, "encoding": self.encoding, "remote": bool(self.target),
                "deadline": f"{self.fixed_deadline} s" if self.fixed_deadline else f"{BASE_DEADLINE_S:g} s + 1 s/MB",
                "max_message_bytes": self.max_bytes}

    def close(self) -> None:
        from plumbing.processes import stop

        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
        if self.server is not None:
            stop(self.server)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


SERVER_KINDS = ("asyncio", "sync")  # the server's kind (server.py --server)
# The cells' own servers (loopback or a private socket, the harness their only client) run grpcio's
# threaded server: side by side (tests/benchmarks/grpc_server_kinds.py) the asyncio one took 1.21x its
# p50 on the MLP at batch 1 and 2.17x on 1 MiB, and a route is measured at its best. A server started
# by hand for others to reach (python -m strategies.grpc.server) is the asyncio one unless told otherwise.
DEFAULT_SERVER_KIND = "sync"


class _Grpc(Strategy):
    languages = ("any",)  # a network service: any language with a gRPC client
    python_at_deployment = True  # in the service, not in the calling application
    encoding: ClassVar[str] = codec.RAW
    transport: ClassVar[str] = "tcp"
    concurrent_calls = True
    runtime_modules = ("grpc",)  # the client's; the server's imports are part of starting it (open)
    settings_keys = ("deadline_s", "max_message_bytes", "startup_timeout_s", "server")  # and `target`, from TARGET_FLAG

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        if settings.get("server", DEFAULT_SERVER_KIND) not in SERVER_KINDS:
            raise ValueError(f"server must be one of {', '.join(SERVER_KINDS)}, got {settings.get('server')!r}")

    def available(self) -> Availability:
        for module, dist in (("grpc", "grpcio"), ("grpc_tools", "grpcio-tools"), ("grpc_health", "grpcio-health-checking")):
            a = Availability.missing_module(module, f"pip install {dist}")
            if not a.ok:
                return a
        return Availability(True)

    def runtime_versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("grpcio", "grpcio-tools", "grpcio-health-checking", "protobuf", "torch")}

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return GrpcSession(model, options, self.encoding, self.transport)


TARGET_FLAG = CliFlag("--grpc-target", "target",
                      "host:port of a server started elsewhere (python -m strategies.grpc.server); the TCP gRPC "
                      "strategies then measure over that network instead of starting their own server", "HOST:PORT")


@register
class Grpc(_Grpc):
    name = "grpc"
    summary = "model in a gRPC server process (KServe-v2-style protocol, raw bytes), TCP loopback"
    cli_flags = (TARGET_FLAG,)


@register
class GrpcNaive(_Grpc):
    name = "grpc-naive"
    summary = "as grpc, but tensors sent as JSON lists, the way quick examples do it"
    encoding = codec.JSON
    cli_flags = (TARGET_FLAG,)


@register
class GrpcUds(_Grpc):
    name = "grpc-uds"
    summary = "as grpc (raw bytes), over a Unix domain socket instead of TCP"
    transport = "uds"
