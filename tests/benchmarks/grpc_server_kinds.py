"""The gRPC server's two kinds side by side (issue 20): the asyncio server (a client that stalls
mid-message holds no worker; the default of a server started by hand) against grpcio's threaded
server (`--server sync`, what the cells' own servers run), measured in one process in rounds of
rotating order: one caller's p50 on the MLP at batch 1 and on the identity model at 1 MiB, and
four callers' throughput on the MLP. Then each server's resident memory after 100 calls of 16 MiB
with distinct request ids, against the same server's before them.

Figures, not a timed test. python -m tests.benchmarks.grpc_server_kinds [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    import strategies
    from bench.measure import closed_loop
    from bench.memory import rss
    from fixtures.builtin import BUILTIN_MODELS
    from fixtures.specs import make_inputs
    from strategies.base import ModelHandle, SessionOptions
    from strategies.grpc import codec, stubs

    strategies.discover()
    grpc_strategy = strategies.get("grpc")
    kinds = ("asyncio", "sync")
    cases = {"mlp b1": ("mlp", 1, 1), "identity 1 MiB": ("identity", 1024, 1), "mlp b1, 4 callers": ("mlp", 1, 4)}
    sessions = {}
    for case, (model, batch, callers) in cases.items():
        for kind in kinds:
            h = ModelHandle(BUILTIN_MODELS[model], 0)
            sessions[(case, kind)] = (grpc_strategy.open(h, None, SessionOptions(1, callers, {"server": kind})),
                                      make_inputs(h.spec, batch, 0), callers)
    results: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    try:
        for s, x, _ in sessions.values():  # warm every session once
            s.time_calls(x, 200)
        for r in range(args.rounds):
            order = list(sessions)[r % len(sessions):] + list(sessions)[:r % len(sessions)]
            for k in order:
                s, x, callers = sessions[k]
                if callers == 1:
                    results[k].append(float(np.median(s.time_calls(x, 300).latency_ns)) / 1e3)
                else:
                    load = closed_loop(s, x, callers, 1.0, 0.2)
                    results[k].append(load.calls / load.wall_s)
        print(f"gRPC server kinds, {args.rounds} rounds in rotating order (medians over rounds)")
        print(f"{'case':<20} {'asyncio':>12} {'sync':>12} {'asyncio/sync':>13}")
        for case, (_, _, callers) in cases.items():
            a, b = (statistics.median(results[(case, k)]) for k in kinds)
            unit = "calls/s" if callers > 1 else "µs p50"
            print(f"{case:<20} {a:>9,.1f} {b:>9,.1f}  {a / b:>10.3f}x   ({unit})")
        for s, _, _ in sessions.values():
            s.close()
        sessions.clear()
        # memory: 100 calls of 16 MiB with distinct request ids against each kind of server
        h = ModelHandle(BUILTIN_MODELS["identity"], 0)
        pb2, _ = stubs.load()
        x = make_inputs(h.spec, 16 * 1024, 0)
        request = codec.encode_request(pb2, x, codec.RAW, "identity")
        mib = 2**20
        for kind in kinds:
            s = grpc_strategy.open(h, None, SessionOptions(1, 1, {"server": kind}))
            s.run(x)
            pid = next(pid for pid, role in s.pids() if "server" in role)
            before = peak = rss(pid)
            for i in range(100):
                request.id = f"distinct-{i:04d}-" + "x" * 1000
                s.infer(request.SerializeToString(), timeout=60)
                peak = max(peak, rss(pid))
            after = rss(pid)
            s.close()
            print(f"{kind} server RSS: {before / mib:,.0f} MiB after one 16 MiB call, {after / mib:,.0f} MiB after 100 "
                  f"more with distinct ids (+{(after - before) / mib:,.0f} MiB; highest sampled {peak / mib:,.0f} MiB)")
    finally:
        for s, _, _ in sessions.values():
            s.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
