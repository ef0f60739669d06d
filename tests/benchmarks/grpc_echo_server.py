"""A bare grpcio unary echo (no protobuf, no model): the floor the gRPC strategy is compared with.

``Echo`` sends back the bytes it received; ``Copy`` a fresh copy of them, as any server whose
answer is new data must; ``TimedCopy`` also the trailing metadata in which the strategy's server
reports its own time. The steps between the echo and the strategy, before any protocol or model."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from strategies.grpc.server import TIMING_KEY, message_options


def echo(request: bytes, context) -> bytes:
    return request


def copy(request: bytes, context) -> bytes:
    return bytes(memoryview(request))  # bytes(request) would hand back the same object


def timed_copy(request: bytes, context) -> bytes:
    t0 = time.perf_counter_ns()
    response = copy(request, context)
    t1 = time.perf_counter_ns()
    context.set_trailing_metadata(((TIMING_KEY, f"0,0,{t1 - t0}"),))
    return response


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    from plumbing.processes import die_with_parent

    die_with_parent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=message_options(512 * 2**20))
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in (("Echo", echo), ("Copy", copy), ("TimedCopy", timed_copy))}  # bytes both ways
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(args.port_file).write_text(json.dumps({"address": f"127.0.0.1:{port}", "pid": os.getpid()}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(1).wait(), done.set()))
    done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
