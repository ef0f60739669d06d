"""The model behind a gRPC microservice: a server process, a KServe-v2-style protocol, three variants
(raw bytes over TCP, naive JSON over TCP, raw bytes over a Unix domain socket)."""

from strategies.grpc.strategy import Grpc, GrpcNaive, GrpcUds

__all__ = ["Grpc", "GrpcNaive", "GrpcUds"]
