"""The C# application as the client of the gRPC strategy's server: .NET's own HTTP/2 stack
(SocketsHttpHandler, what Grpc.Net.Client runs on) with the project's hand-written gRPC framing and
protobuf encoding (GrpcClient.cs), on CoreCLR; TCP loopback and Unix domain socket."""

from strategies.clr_grpc.strategy import ClrGrpc, ClrGrpcUds

__all__ = ["ClrGrpc", "ClrGrpcUds"]
