"""What does the C++ extension cost per call? The `libtorch-ts` session (NumPy -> from_blob -> C++
forward -> NumPy over the output tensor) against calling the same TorchScript file from Python
(torch.jit.load, torch.from_numpy, .numpy()), side by side in alternating rounds, plus the
identity floor of every in-process strategy. Prints figures.

    python -m tests.benchmarks.libtorch_overhead [--rounds 8]
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
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.4)
    args = ap.parse_args()

    import torch

    import strategies
    from fixtures.builtin import BUILTIN_MODELS
    from strategies.base import ModelHandle, SessionOptions
    from strategies.libtorch.strategy import ARTIFACT
    from tests.benchmarks.common import median_call_s, paired

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    print(f"LibTorch extension vs the same TorchScript module called from Python, 1 thread, {args.rounds} rounds")
    print(f"{'model':>10} {'batch':>5} {'C++ ext p50':>12} {'Python TS p50':>14} {'diff':>9} {'ratio':>6}")
    for model, batch in (("identity", 1), ("mlp", 1), ("mlp", 64)):
        spec = BUILTIN_MODELS[model]
        handle = ModelHandle(spec, 0)
        art = tmp / f"ts-{model}"
        art.mkdir(exist_ok=True)
        ts = strategies.get("libtorch-ts")
        if not (art / ARTIFACT["ts"]).exists():
            ts.prepare(handle, art)
        session = ts.open(handle, art, SessionOptions(threads=1))
        module = torch.jit.load(str(art / ARTIFACT["ts"])).eval()
        order = [t.name for t in spec.inputs]
        inputs = handle.example_inputs(batch)

        def python_ts(m=module, x=inputs, names=order):
            with torch.inference_mode():
                out = m(*[torch.from_numpy(x[n]) for n in names])
            return out.numpy()

        ext, py, ratios = paired(lambda s=session, x=inputs: s.run(x), python_ts, args.rounds, args.seconds)
        r = statistics.median(ratios)
        print(f"{model:>10} {batch:>5} {ext * 1e6:>10.2f}µs {py * 1e6:>12.2f}µs {(ext - py) * 1e6:>+7.2f}µs {r:>6.3f}")
        session.close()

    print("\nidentity floor, batch 1 (1 KiB each way), median of one long run per strategy:")
    spec = BUILTIN_MODELS["identity"]
    handle = ModelHandle(spec, 0)
    x = handle.example_inputs(1)
    for name in ("torch", "libtorch-ts", "libtorch-aoti", "onnxruntime"):
        s = strategies.get(name)
        art = tmp / f"{name}-identity"
        art.mkdir(exist_ok=True)
        if s.needs_artifacts and not any(art.iterdir()):
            s.prepare(handle, art)
        session = s.open(handle, art if s.needs_artifacts else None, SessionOptions(threads=1))
        print(f"  {name:<14} {median_call_s(lambda s=session: s.run(x), args.seconds * 3) * 1e6:8.2f} µs")
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
