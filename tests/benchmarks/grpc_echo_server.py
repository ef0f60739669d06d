"""A bare grpcio unary echo (no protobuf, no model): the floor the gRPC strategy is compared with."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

from strategies.grpc.server import message_options


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    from bench.processes import die_with_parent

    die_with_parent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=message_options(512 * 2**20))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)  # bytes in, same bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(args.port_file).write_text(json.dumps({"address": f"127.0.0.1:{port}", "pid": os.getpid()}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(1).wait(), done.set()))
    done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
