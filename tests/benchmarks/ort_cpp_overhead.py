"""What does the caller's language cost around ONNX Runtime? The same ONNX file, the same session
settings and threads, called from C++ (`cpp-onnxruntime`, its own loop timed in C++) and from Python
(`onnxruntime`, OrtValues without copies, timed in Python), side by side in rotating rounds. The
identity model at 1 KiB, 1 MiB and 16 MiB gives each caller's fixed cost per call and cost per byte
(a line through the three sizes, fitted on relative error); the MLP at batch 1 shows what is left on a real model.
Prints figures.

    python -m tests.benchmarks.ort_cpp_overhead [--rounds 6] [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=0.3)
    args = ap.parse_args()

    import numpy as np

    import strategies
    from fixtures.builtin import BUILTIN_MODELS, IDENTITY_ROW_BYTES
    from strategies.base import ModelHandle, SessionOptions
    from tests.benchmarks.common import median_call_s, rotating

    tmp = Path(tempfile.mkdtemp())
    cpp, py = strategies.get("cpp-onnxruntime"), strategies.get("onnxruntime")
    sessions = {}
    for model in ("identity", "mlp"):
        handle = ModelHandle(BUILTIN_MODELS[model], 0)
        art = tmp / model
        art.mkdir()
        cpp.prepare(handle, art)  # the ONNX file both callers run
        sessions[model] = (cpp.open(handle, art, SessionOptions(1)), py.open(handle, art, SessionOptions(1)))

    def cpp_loop(session, x) -> float:
        n = max(20, int(args.seconds / max(float(np.median(session.time_calls(x, 20).latency_ns)) / 1e9, 1e-7)))
        return float(np.median(session.time_calls(x, n).latency_ns)) / 1e9

    cases = [("identity", 1), ("identity", 1024), ("identity", 16 * 1024), ("mlp", 1)]
    print(f"ONNX Runtime from C++ vs from Python, same file and settings, 1 thread, {args.rounds} rotating rounds")
    print(f"{'case':>16} {'C++ loop':>11} {'C++ via run()':>14} {'Python':>11} {'C++/Python':>11}")
    medians: dict[str, dict[int, float]] = {"cpp": {}, "py": {}}
    for model, batch in cases:
        c, p = sessions[model]
        x = ModelHandle(BUILTIN_MODELS[model], 0).example_inputs(batch)
        times = rotating({"cpp": lambda c=c, x=x: cpp_loop(c, x),
                          "cpp_run": lambda c=c, x=x: median_call_s(lambda: c.run(x), args.seconds),
                          "py": lambda p=p, x=x: median_call_s(lambda: p.run(x), args.seconds)}, args.rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times["cpp"], times["py"]))
        label = f"{model} {batch * IDENTITY_ROW_BYTES // 1024}KiB" if model == "identity" else f"{model} b{batch}"
        print(f"{label:>16} {med['cpp'] * 1e6:>9.2f}µs {med['cpp_run'] * 1e6:>12.2f}µs {med['py'] * 1e6:>9.2f}µs {ratio:>11.3f}")
        if model == "identity":
            medians["cpp"][batch * IDENTITY_ROW_BYTES] = med["cpp"]
            medians["py"][batch * IDENTITY_ROW_BYTES] = med["py"]

    fits = {}
    for who, pts in medians.items():
        sizes = np.array(sorted(pts), dtype=float)
        y = np.array([pts[int(s)] for s in sizes])
        per_byte, fixed = np.polyfit(sizes, y, 1, w=1 / y)  # relative errors: 1 KiB weighs as much as 16 MiB
        fits[who] = (fixed, per_byte)
        print(f"  {who:>3}: fixed {fixed * 1e6:7.2f} µs per call, {per_byte * 1e12 * 1024**2 / 1e6:8.1f} µs per MiB")
    (fc, bc), (fp, bp) = fits["cpp"], fits["py"]
    print(f"  C++ fixed cost {fc / fp:.2f}x Python's (target: at most 0.5x); per byte {bc / bp:.2f}x (target: at most 1x)")
    print("  (identity in both: ORT's Identity op copies its input into the output at every size)")
    for c, p in sessions.values():
        c.close()
        p.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
