"""What does the .NET boundary cost? On the real Mono CLR under pythonnet, measured in one run:

- an empty call in each direction: Python -> .NET (a static no-op C# method, timed in Python) and
  .NET -> Python (Py.GIL() and a no-op Python callable, timed in C# by Stopwatch; pythonnet releases
  the GIL while Python calls into .NET, so Py.GIL() really acquires it, as on a C# application thread);
- copy bandwidth at 1 KiB, 1 MiB and 64 MiB the way the strategies cross: bulk (pinned .NET array
  <-> new NumPy array, one memcpy, `clr-embed`) and element by element (`clr-naive`), each direction,
  against NumPy copying the same bytes (`a.copy()`), in alternating rounds, median of paired ratios.

    python -m tests.benchmarks.clr_overhead [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_NUM_THREADS", "1")

SIZES = (("1 KiB", 1 << 10), ("1 MiB", 1 << 20), ("64 MiB", 64 << 20))
CALLS = {1 << 10: 2000, 1 << 20: 100, 64 << 20: 3}  # copies per round and direction (bulk)
NAIVE_MAX = 1 << 20  # element by element at 64 MiB would take minutes a round


def _gbps(nbytes: int, ns: float) -> float:
    return nbytes / ns


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3)
    args = ap.parse_args()

    import numpy as np

    from strategies.clr.strategy import dotnet_tensors
    from strategies.shared import dotnet
    from tests.benchmarks.common import median_call_s

    reason = dotnet.missing()
    if reason:
        print(f"clr benchmark cannot run: {reason}")
        return 1
    ib = dotnet.load()

    runner = ib.Runner(lambda *a: (), False)
    print(f"Mono {dotnet.mono_version()}, pythonnet, Stopwatch ticks of {1e9 / ib.Runner.Frequency:g} ns, "
          f"{args.rounds} rounds")

    # ---- empty calls across the boundary ----
    nothing = ib.Runner.Nothing
    py_to_net = [median_call_s(nothing, args.seconds) * 1e9 for _ in range(args.rounds)]

    def noop() -> None:
        return None

    net_to_py = [ib.Runner.EmptyCallsIntoPython(noop, 20000) for _ in range(args.rounds)]
    print("\nempty call across the boundary (median of rounds):")
    print(f"  Python -> .NET (static no-op C# method, timed in Python):      {statistics.median(py_to_net):8.0f} ns")
    print(f"  .NET -> Python (Py.GIL() + no-op callable, timed in C#):       {statistics.median(net_to_py):8.0f} ns")

    # ---- copy bandwidth ----
    print("\ncopy bandwidth, GB/s (bytes / median time of one copy, allocation included on both sides):")
    print(f"{'size':>7} {'NumPy copy':>11} {'.NET->NumPy':>12} {'NumPy->.NET':>12} {'ratio in':>9} {'ratio out':>9}"
          f" {'naive ->NumPy':>14} {'naive ->.NET':>13}")
    for label, nbytes in SIZES:
        src = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
        (tensor,) = dotnet_tensors(ib, [src])
        n = CALLS[nbytes]
        numpy_ns, to_ns, from_ns, r_to, r_from = [], [], [], [], []
        for _ in range(args.rounds):  # alternate: drift on a shared machine hits both alike
            t = _copies(ib, runner, tensor, False, n)
            c = median_call_s(src.copy, args.seconds) * 1e9
            numpy_ns.append(c)
            to_ns.append(t[0])
            from_ns.append(t[1])
            r_to.append(t[0] / c)
            r_from.append(t[1] / c)
        naive = ("", "")
        if nbytes <= NAIVE_MAX:
            t = _copies(ib, runner, tensor, True, 3 if nbytes > 1 << 16 else 50)
            naive = (f"{_gbps(nbytes, t[0]) * 1e3:9.1f} MB/s", f"{_gbps(nbytes, t[1]) * 1e3:8.1f} MB/s")
        m = statistics.median
        print(f"{label:>7} {_gbps(nbytes, m(numpy_ns)):>11.2f} {_gbps(nbytes, m(to_ns)):>12.2f} "
              f"{_gbps(nbytes, m(from_ns)):>12.2f} {m(r_to):>8.2f}x {m(r_from):>8.2f}x {naive[0]:>14} {naive[1]:>13}")
    print("(ratio: time of the .NET-side copy over NumPy's copy of the same bytes, median of paired rounds)")
    return 0


def _copies(ib, runner, tensor, elementwise: bool, n: int) -> tuple[float, float]:
    """Median ns of one copy .NET -> NumPy and NumPy -> .NET, timed in C#."""
    import numpy as np

    ticks = runner.TimeCopies(tensor, elementwise, n)
    ns = np.empty(2 * n, dtype=np.int64)
    ib.Runner.CopyLongs(ticks, ns.ctypes.data)
    ns = ns.reshape(n, 2)
    return float(np.median(ns[:, 0])), float(np.median(ns[:, 1]))


if __name__ == "__main__":
    raise SystemExit(main())
