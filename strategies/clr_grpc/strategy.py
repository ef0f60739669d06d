from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from strategies import register
from strategies.base import Availability, ModelHandle, Session, SessionOptions, package_version
from strategies.clr.strategy import ClrCallerSession, ClrSession, ClrStrategy
from strategies.grpc import codec
from strategies.grpc.strategy import BASE_DEADLINE_S, GrpcSession

NO_HTTP2_ON_MONO = "Mono's HttpClient has no HTTP/2, so the C# gRPC client runs on CoreCLR only"
#: what Grpc.Net.Client does on every call that this client does not, for a reader weighing the figures
NOT_DONE = ("a GrpcCall object and its cancellation registration, DiagnosticSource/Activity hooks, header "
            "validation, protobuf message objects (here the request header is encoded once, raw bytes copied per call)")


class ClrGrpcSession(ClrCallerSession):
    """The project's gRPC server, started and health-checked as the grpc strategy does; the calls that
    are timed are C#'s (GrpcClient.cs over SocketsHttpHandler), one HttpClient shared by the callers."""

    phases = GrpcSession.phases

    def __init__(self, model: ModelHandle, options: SessionOptions, transport: str) -> None:
        super().__init__(model, options, runtime="coreclr")
        self.transport = transport
        self.server = GrpcSession(model, options, codec.RAW, transport)  # the server, its health, its model's hash
        try:
            deadline = float(options.settings.get("deadline_s", BASE_DEADLINE_S))
            # "127.0.0.1:PORT" or "unix:/path", as the server's port file says
            self.client = ClrSession._invoke(self._ib.GrpcRunner, self.server.address, model.spec.name, deadline,
                                             self.server.max_bytes)
        except BaseException:
            self.server.close()
            raise

    def new_caller(self, dtypes: Any, shapes: Any, addresses: Any) -> Any:
        from System import Array, String

        return self.client.NewCaller(Array[String](self.names), dtypes, shapes, addresses)

    def pids(self) -> list[tuple[int, str]]:
        return self.server.pids()

    def describe(self) -> dict[str, Any]:
        from strategies.shared import dotnet

        return {"caller": "C# (GrpcClient.cs) over .NET's HTTP/2 stack (SocketsHttpHandler), timed in the CLR; "
                          "concurrent callers are C# threads sharing one HttpClient",
                "runtime": dotnet.runtime_label(self.runtime),
                "transport": "Unix domain socket (ConnectCallback)" if self.transport == "uds" else "TCP loopback 127.0.0.1",
                "encoding": "raw bytes; gRPC framing and protobuf written by hand (no NuGet here)",
                "http/2 settings": str(self.client.Settings),
                "not done per call (Grpc.Net.Client does)": NOT_DONE,
                "gen2 collections": int(self._ib.GrpcRunner.Gen2Collections())}

    def close(self) -> None:
        try:
            super().close()
            client = getattr(self, "client", None)
            if client is not None:
                client.Dispose()
        finally:
            self.server.close()


class _ClrGrpc(ClrStrategy):
    python_at_deployment = True  # in the service, not in the C# application
    transport: ClassVar[str] = "tcp"
    needs_artifacts = True  # the compiled C# assembly
    runtime_modules = ("pythonnet", "clr_loader", "grpc")  # grpc: the health check and model check before the C# calls
    cli_flags = ()  # --clr-runtime does not apply: CoreCLR only
    variants = ()
    settings_keys = ("deadline_s", "max_message_bytes", "startup_timeout_s")

    def available(self) -> Availability:
        from strategies.shared import dotnet

        for module, dist in (("grpc", "grpcio"), ("grpc_tools", "grpcio-tools"), ("grpc_health", "grpcio-health-checking")):
            a = Availability.missing_module(module, f"pip install {dist}")
            if not a.ok:
                return a
        reason = dotnet.missing("coreclr")
        return Availability(not reason, reason + (f" ({NO_HTTP2_ON_MONO})" if reason else ""))

    def default_variant(self) -> str:
        return ""

    def runtime_versions(self) -> dict[str, str]:
        from strategies.shared import dotnet

        return {"clr": dotnet.runtime_label("coreclr"), "pythonnet": package_version("pythonnet"),
                **{d: package_version(d) for d in ("grpcio", "protobuf", "torch")}}

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return ClrGrpcSession(model, options, self.transport)


@register
class ClrGrpc(_ClrGrpc):
    name = "clr-grpc"
    summary = f"a C# client (CoreCLR's HTTP/2, hand-written gRPC framing) calls the grpc strategy's server, TCP loopback; {NO_HTTP2_ON_MONO}"


@register
class ClrGrpcUds(_ClrGrpc):
    name = "clr-grpc-uds"
    summary = "as clr-grpc, over a Unix domain socket"
    transport = "uds"
