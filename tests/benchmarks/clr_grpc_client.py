"""The C# gRPC client (clr-grpc: .NET 8's SocketsHttpHandler, hand-written framing) against the
Python client (grpcio's C core, the grpc strategy) on the same server process, in one run (figures,
not asserted targets): the identity model at 1 KiB, 1 MiB and 16 MiB over TCP loopback, one call in
flight, rotating order, each client timed by its own clock. Per size: medians, the per-round ratio,
the median breakdown (encode, transport, server, decode) of each, the C# side's gen2 collections,
and the HTTP/2 settings applied. The issue's target: the 1 MiB gap within 20% of the Python client,
or explained with measurements.

    python -m tests.benchmarks.clr_grpc_client [--rounds 6] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_NUM_THREADS", "1")

SIZES = (("1 KiB", 1), ("1 MiB", 1024), ("16 MiB", 16384))  # identity rows of 1 KiB


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = ap.parse_args()

    import time

    import numpy as np

    import strategies
    from fixtures.builtin import BUILTIN_MODELS
    from strategies.base import ModelHandle, SessionOptions
    from strategies.grpc import codec
    from strategies.grpc.strategy import GrpcSession
    from tests.benchmarks.common import rotating

    clr = strategies.get("clr-grpc")
    if not clr.available().ok:
        print(f"clr-grpc cannot run here: {clr.available().reason}")
        return 1
    spec = BUILTIN_MODELS["identity"]
    handle = ModelHandle(spec, 0)
    csharp = clr.open(handle, None, SessionOptions(1))
    python = GrpcSession(handle, SessionOptions(1, settings={"target": csharp.server.address}), codec.RAW, "tcp")
    ib = csharp._ib
    try:
        inputs = {label: handle.example_inputs(rows) for label, rows in SIZES}
        breakdown: dict[tuple[str, str], list[dict[str, float]]] = {}
        gen2: dict[str, list[int]] = {label: [] for label, _ in SIZES}
        calls: dict[str, list[int]] = {label: [] for label, _ in SIZES}

        def timed(session, who: str, label: str) -> float:
            x = inputs[label]
            session.time_calls(x, 3)
            t0 = time.perf_counter()
            session.time_calls(x, 3)
            n = int(min(5000, max(10, args.seconds / max((time.perf_counter() - t0) / 3, 1e-6))))
            g0 = int(ib.GrpcRunner.Gen2Collections())
            if who == "python":
                lat, phases = [], {p: [] for p in session.phases}
                for _ in range(n):
                    c0 = time.perf_counter_ns()
                    session.run(x)
                    lat.append(time.perf_counter_ns() - c0)
                    for p, v in session.last_phases_ns().items():
                        phases[p].append(v)
                med = float(np.median(lat))
                breakdown.setdefault((who, label), []).append({p: float(np.median(v)) for p, v in phases.items()})
            else:
                t = session.time_calls(x, n)
                med = float(np.median(t.latency_ns))
                breakdown.setdefault((who, label), []).append({p: float(np.median(v)) for p, v in t.phases_ns.items()})
                gen2[label].append(int(ib.GrpcRunner.Gen2Collections()) - g0)
                calls[label].append(n)
            return med

        measures = {}
        for label, _ in SIZES:
            measures[f"csharp|{label}"] = lambda label=label: timed(csharp, "csharp", label)
            measures[f"python|{label}"] = lambda label=label: timed(python, "python", label)
        got = rotating(measures, args.rounds)
    finally:
        python.close()
        settings = str(csharp.client.Settings)
        csharp.close()

    med = statistics.median
    print(f"identity over TCP loopback, one call in flight, {args.rounds} rotating rounds; C# client on "
          ".NET 8 (CoreCLR)")
    print(f"C# HTTP/2 settings: {settings}\n")
    print(f"{'size':>7} {'C# µs':>9} {'Python µs':>10} {'C#/Python':>10} {'C# gen2 / 1000 calls':>21}")
    for label, _ in SIZES:
        cs, py = got[f"csharp|{label}"], got[f"python|{label}"]
        ratio = med([a / b for a, b in zip(cs, py)])
        g = 1000 * sum(gen2[label]) / max(1, sum(calls[label]))
        print(f"{label:>7} {med(cs) / 1e3:>9.1f} {med(py) / 1e3:>10.1f} {ratio:>9.2f}x {g:>21.1f}")
    print("\nmedian breakdown, µs (encode | transport | server decode+compute+encode | decode)")
    for label, _ in SIZES:
        for who in ("csharp", "python"):
            rows = breakdown[(who, label)]
            b = {p: med([r[p] for r in rows]) / 1e3 for p in rows[0]}
            server = b["server_decode"] + b["server_compute"] + b["server_encode"]
            print(f"{label:>7} {who:<7} {b['client_encode']:>8.1f} | {b['transport']:>9.1f} | {server:>8.1f} | {b['client_decode']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
