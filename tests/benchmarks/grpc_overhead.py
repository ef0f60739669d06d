"""What does the gRPC strategy add over gRPC itself? The identity model's round trip through the
`grpc` strategy (KServe-style request, validation, torch, trailing metadata) against a bare grpcio
unary echo of the same bytes, both on TCP loopback with one channel, measured alternately in one
run. The figure is the median of the paired per-round ratios (each pair measured back to back, so
drift on a shared machine cancels). Target: the strategy adds at most 20% over the bare echo.
Prints figures; a miss is reported, not raised. Every process here (this client, both servers)
runs the allocator policy a bench run gives its cells (``--malloc``, default steady).

    python -m tests.benchmarks.grpc_overhead [--rounds 9] [--malloc default]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import allocator
from tests.benchmarks.common import paired

TARGET = 0.20
SIZES = {"1 KiB": 1, "1 MiB": 1024, "16 MiB": 16 * 1024}  # identity rows of 1 KiB


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--malloc", choices=allocator.POLICIES, default="steady")
    args = ap.parse_args()
    applied = allocator.apply_here(args.malloc)  # before any large allocation; the servers inherit it

    import grpc

    from bench.processes import die_with_parent, stop
    from fixtures.builtin import BUILTIN_MODELS
    from strategies.base import ModelHandle, SessionOptions
    from strategies.grpc.server import message_options
    from strategies.grpc.strategy import GrpcSession

    tmp = Path(tempfile.mkdtemp())
    port_file = tmp / "echo.json"
    echo_proc = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.grpc_echo_server", "--port-file", str(port_file)],
                                 preexec_fn=die_with_parent)
    spec = BUILTIN_MODELS["identity"]
    session = GrpcSession(ModelHandle(spec, 0), SessionOptions(threads=1), "raw", "tcp")
    try:
        while not port_file.exists():
            time.sleep(0.05)
        channel = grpc.insecure_channel(json.loads(port_file.read_text())["address"], options=message_options(512 * 2**20))
        echo = channel.unary_unary("/echo.Echo/Echo")  # bytes, no serializer
        grpc.channel_ready_future(channel).result(timeout=30)
        print(f"gRPC strategy vs bare grpcio echo, identity model, TCP loopback, {args.rounds} alternating rounds")
        print(f"allocator: {allocator.describe(args.malloc)}" + ("" if applied else " (not glibc: not applied)"))
        print(f"{'payload':>8} {'grpc p50':>11} {'echo p50':>11} {'added':>8}   per-round ratios")
        worst = 0.0
        for label, rows in SIZES.items():
            inputs = ModelHandle(spec, 0).example_inputs(rows)
            payload = inputs["x"].tobytes()
            o, b, ratios = paired(lambda i=inputs: session.run(i), lambda p=payload: echo(p, timeout=30),
                                  args.rounds, args.seconds)
            r = statistics.median(ratios)
            worst = max(worst, r - 1)
            print(f"{label:>8} {o * 1e6:>9.1f}µs {b * 1e6:>9.1f}µs {r - 1:>+8.1%}   " + " ".join(f"{x:.3f}" for x in ratios))
        verdict = "within" if worst <= TARGET else "ABOVE"
        print(f"largest overhead {worst:+.1%}: {verdict} the {TARGET:.0%} target")
        channel.close()
    finally:
        session.close()
        stop(echo_proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
