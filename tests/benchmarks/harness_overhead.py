"""How much does the harness itself add? For in-process torch on the MLP, the harness's median
(warm-up + adaptive sampling through Session.time_calls) against
torch.utils.benchmark.Timer(...).blocked_autorange()'s median for the same call, measured side by
side in one process, alternating, several rounds. Target: within 5%. Prints figures; a miss is
reported, not raised (shared machines are noisy; see the README for recorded figures).

    python -m tests.benchmarks.harness_overhead [--rounds 7] [--batch 1 --batch 64]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_NUM_THREADS", "1")

TARGET = 0.05


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--model", default="mlp")
    args = ap.parse_args()

    import numpy as np
    import torch.utils.benchmark as tb

    import strategies
    from bench.measure import SamplingConfig, sample, warm_up
    from fixtures.builtin import BUILTIN_MODELS
    from strategies.base import ModelHandle, SessionOptions

    cfg = SamplingConfig()  # the default profile's budgets
    handle = ModelHandle(BUILTIN_MODELS[args.model], 0)
    session = strategies.get("torch").open(handle, None, SessionOptions(threads=1))
    print(f"harness overhead: torch strategy, {args.model}, 1 thread, {args.rounds} alternating rounds")
    print(f"{'batch':>5} {'harness p50':>12} {'Timer p50':>12} {'ratio':>7}   per-round ratios")
    worst = 0.0
    for batch in args.batch or [1, 64]:
        inputs = handle.example_inputs(batch)
        timer = tb.Timer(stmt="session.run(inputs)", globals={"session": session, "inputs": inputs}, num_threads=1)
        ours, theirs = [], []
        for _ in range(args.rounds):
            _, per_call = warm_up(session, inputs, cfg)
            ours.append(float(np.median(sample(session, inputs, cfg, per_call).latency_ns)) / 1e9)
            theirs.append(timer.blocked_autorange(min_run_time=cfg.max_time_s / 2).median)
        ratios = [a / b for a, b in zip(ours, theirs)]
        h, t, r = statistics.median(ours), statistics.median(theirs), statistics.median(ratios)
        worst = max(worst, abs(r - 1))
        print(f"{batch:>5} {h * 1e6:>10.2f}µs {t * 1e6:>10.2f}µs {r:>7.3f}   "
              + " ".join(f"{r:.3f}" for r in ratios))
    verdict = "within" if worst <= TARGET else "ABOVE"
    print(f"largest deviation {worst:.1%}: {verdict} the {TARGET:.0%} target")
    session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
