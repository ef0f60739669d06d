"""What does the gRPC strategy add over gRPC itself? The identity model's round trip through the
`grpc` strategy (KServe-style request, validation, torch, trailing metadata) against a bare grpcio
unary echo of the same bytes, both on TCP loopback with one channel each. Target: the strategy
adds at most 20% over the bare echo.

Between the two, the same run measures the steps any array-in, array-out service over grpcio takes
before it has a protocol or a model, so a miss can be read off as what it is made of:

  echo         the bytes, sent back as received (the reference of the target)
  copies       + the client makes the bytes from the array and reads the answer as an array, and
               the server answers with a fresh copy: grpc-python sends only ``bytes``, so a client
               holding an array and a server whose output is new data each copy once
  timing       + the server's time in trailing metadata, read by the client (the issue asks for it)
  grpc         the strategy: + the KServe-style framing and checks, and the torch call

All four are measured in every round, in an order that rotates from round to round; each figure is
the median over rounds of the per-round ratio to the echo (drift on a shared machine hits all four
alike). Prints figures; a miss is reported, not raised. Every process here (this client, both
servers) runs the allocator policy a bench run gives its cells (``--malloc``, default steady).

    python -m tests.benchmarks.grpc_overhead [--rounds 8] [--seconds 0.4] [--malloc default]
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

import numpy as np

from bench import allocator
from tests.benchmarks.common import interleaved, ratios

TARGET = 0.20
SIZES = {"1 KiB": 1, "1 MiB": 1024, "16 MiB": 16 * 1024}  # identity rows of 1 KiB
STEPS = ("echo", "copies", "timing", "grpc")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8, help="a multiple of 4 balances the order")
    ap.add_argument("--seconds", type=float, default=0.4, help="per step and round")
    ap.add_argument("--malloc", choices=allocator.POLICIES, default="steady")
    args = ap.parse_args()
    applied = allocator.apply_here(args.malloc)  # before any large allocation; the servers inherit it

    import grpc

    from fixtures.builtin import BUILTIN_MODELS
    from plumbing.processes import die_with_parent, stop
    from strategies.base import ModelHandle, SessionOptions
    from strategies.grpc.server import TIMING_KEY, message_options
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
        echo, copy, timed_copy = (channel.unary_unary(f"/echo.Echo/{m}") for m in ("Echo", "Copy", "TimedCopy"))  # bytes
        grpc.channel_ready_future(channel).result(timeout=30)

        def copies(x: np.ndarray) -> np.ndarray:
            return np.frombuffer(copy(x.tobytes(), timeout=30), x.dtype).reshape(x.shape)

        def timing(x: np.ndarray) -> np.ndarray:
            data, call = timed_copy.with_call(x.tobytes(), timeout=30)
            dict(call.trailing_metadata())[TIMING_KEY].split(",")
            return np.frombuffer(data, x.dtype).reshape(x.shape)

        print(f"gRPC strategy vs bare grpcio echo, identity model, TCP loopback, {args.rounds} rounds of "
              f"{len(STEPS)} steps in rotating order, {args.seconds:g} s each")
        print(f"allocator: {allocator.describe(args.malloc)}" + ("" if applied else " (not glibc: not applied)"))
        print(f"{'payload':>8} {'echo p50':>10} {'+copies':>8} {'+timing':>8} {'grpc':>8}   {'grpc over timing':>16}   "
              "grpc/echo per round")
        worst = 0.0
        for label, rows in SIZES.items():
            inputs = ModelHandle(spec, 0).example_inputs(rows)
            x = inputs["x"]
            payload = x.tobytes()
            for check in (copies(x), timing(x), session.run(inputs)["y"]):
                np.testing.assert_array_equal(check, x)  # every step really does the round trip
            times = interleaved({"echo": lambda p=payload: echo(p, timeout=30), "copies": lambda x=x: copies(x),
                                 "timing": lambda x=x: timing(x), "grpc": lambda i=inputs: session.run(i)},
                                args.rounds, args.seconds)
            added = {s: statistics.median(ratios(times, s, "echo")) - 1 for s in STEPS[1:]}
            own = statistics.median(ratios(times, "grpc", "timing")) - 1
            worst = max(worst, added["grpc"])
            print(f"{label:>8} {statistics.median(times['echo']) * 1e6:>8.1f}µs "
                  + " ".join(f"{added[s]:>+8.1%}" for s in STEPS[1:])
                  + f"   {own:>+16.1%}   " + " ".join(f"{r:.3f}" for r in ratios(times, "grpc", "echo")))
        verdict = "within" if worst <= TARGET else "ABOVE"
        print(f"largest overhead of grpc over the echo {worst:+.1%}: {verdict} the {TARGET:.0%} target")
        print("(+copies, +timing: each step's time over the echo's; grpc over timing: what the strategy's protocol, "
              "checks and torch call add to a server that already copies and reports its time)")
        channel.close()
    finally:
        session.close()
        stop(echo_proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
