"""How often does `bench compare` cry wolf? K identical runs of a small matrix, one after another on
this machine; every later run compared with the first. Any regression flagged is a false alarm.
Prints the rate per kind of cell (one caller, several callers) and every alarm.

    python -m tests.benchmarks.compare_false_alarms [--reruns 6] [--threshold 0.1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

MATRIX = ["--profile", "quick", "--models", "mlp,transformer", "--strategies", "torch,onnxruntime", "--batch-sizes", "1,8",
          "--concurrency", "1,2", "--payload-sizes", "none", "--no-report"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reruns", type=int, default=6)
    ap.add_argument("--threshold", type=float, default=0.10)
    ap.add_argument("--reuse", type=Path, help="compare the runs already in this folder instead of running")
    args = ap.parse_args()

    from bench.compare import compare_runs, format_ci
    from bench.results import RunDir

    root = args.reuse or Path(tempfile.mkdtemp(prefix="false-alarms-"))
    for k in range(0 if args.reuse else args.reruns):
        p = subprocess.run([sys.executable, "-m", "bench", "run", *MATRIX, "--out", str(root), "--run-id", f"r{k}"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-2000:])
            return 1
        print(f"run {k + 1}/{args.reruns} done", flush=True)
    totals = {"one caller": [0, 0], "several callers": [0, 0]}
    alarms = []
    for k in range(1, args.reruns):
        cmp = compare_runs(RunDir(root / "r0"), RunDir(root / f"r{k}"), args.threshold)
        for c in cmp.changes:
            kind = "one caller" if c.cell_id.endswith("/c1") else "several callers"
            totals[kind][1] += 1
            if c.verdict == "regression":
                totals[kind][0] += 1
                alarms.append(f"  r{k}: {c.cell_id} {c.metric} ratio {c.ratio:.3f} CI {format_ci(c)}")
    print(f"\nfalse alarms over {args.reruns - 1} identical reruns compared with the first "
          f"(threshold {args.threshold:.0%}, alpha 0.05):")
    for kind, (bad, n) in totals.items():
        print(f"  {kind:<16} {bad} of {n} metrics ({bad / max(n, 1):.1%})")
    print("\n".join(alarms) or "  none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
