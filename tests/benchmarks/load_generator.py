"""The open-loop load generator's own limits (issue 16), against a session that does nothing:

- its ceiling: the highest Poisson arrival rate the Python driver serves with under 1% of requests
  sent more than 1 ms late (bench.arrivals.ceiling, the figure every run measures and flags rates
  against);
- its accuracy at 10%, 50% and 90% of that ceiling: achieved against offered rate, the share sent
  late, and how late a send typically is (p50/p99 of send - schedule).

Figures, not a timed test. python -m tests.benchmarks.load_generator [--callers 4] [--seconds 2]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from bench import arrivals

    c = arrivals.ceiling(args.callers)
    print(f"load generator: Python threads, {args.callers} callers, a session that does nothing")
    print(f"ceiling: {c['ceiling_rps']:,.0f} requests/s with under {c['max_late']:.0%} sent over "
          f"{arrivals.LATE_S * 1e3:g} ms late (tried: " + ", ".join(f"{r:,.0f}/s {f:.1%}" for r, f in c["tried"]) + ")")
    print(f"{'share':>6} {'offered/s':>10} {'achieved/s':>11} {'ratio':>7} {'late':>6} {'lag p50':>9} {'lag p99':>9}")
    null = arrivals.NullSession()
    for share in (0.1, 0.5, 0.9):
        rate = share * c["ceiling_rps"]
        for k in range(args.rounds):
            res = arrivals.drive(null, {}, arrivals.plan(rate, args.seconds, 200, args.seconds, 0.2, seed=k), args.callers)
            f = res.figures()
            lag = (res.send_ns - res.sched_ns) / 1e3
            print(f"{share:>6.0%} {f['offered_rps']:>10,.0f} {f['achieved_rps']:>11,.0f} "
                  f"{f['achieved_rps'] / f['offered_rps']:>6.3f}x {f['late_fraction']:>6.2%} "
                  f"{np.percentile(lag, 50):>7.0f}µs {np.percentile(lag, 99):>7.0f}µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
