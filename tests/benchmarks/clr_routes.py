"""The .NET routes side by side, on both CLRs, in one run (figures, not asserted targets):

1. clr-onnxruntime (C# over ONNX Runtime's C API) against ONNX Runtime's own floor for the same ONNX
   file and threads: the C++ caller (cpp-onnxruntime) and the Python API, on the MLP and the
   transformer at batch 1 and 64. Target: clr-onnxruntime's median within 10% of the floor's.
2. The empty round trip C# -> CPython -> C#: CPython's C API by P/Invoke (clr-capi's path) against
   pythonnet's Py.GIL() + a no-op call (clr-embed's path). Target: the C-API path at least 2x cheaper.
3. CoreCLR against Mono for clr-embed and clr-onnxruntime on the MLP at batch 1 and 64.

One process hosts one CLR, so each round starts one child process per runtime (the order alternates);
inside a child every route is measured in rotating order, each by its own clock (time_calls: the CLR's
Stopwatch, the C++ caller's steady_clock), median of a batch of calls. Summaries are medians over rounds.

    python -m tests.benchmarks.clr_routes [--rounds 4] [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ORT_CASES = [("mlp", 1), ("mlp", 64), ("transformer", 1), ("transformer", 64)]
ORT_ROUTES = ("clr-onnxruntime", "cpp-onnxruntime", "onnxruntime")
EMBED_CASES = [("mlp", 1), ("mlp", 64)]


def _median_of_calls(session, inputs, seconds: float) -> float:
    """Median ns of one call, from the session's own clock, over about ``seconds`` of calls."""
    import time

    import numpy as np

    session.time_calls(inputs, 20)  # warm-up (and the first call's one-off output binding)
    t0 = time.perf_counter()
    session.time_calls(inputs, 20)
    per = max((time.perf_counter() - t0) / 20, 1e-6)
    n = int(min(20000, max(30, seconds / per)))
    return float(np.median(session.time_calls(inputs, n).latency_ns))


def child(runtime: str, seconds: float, cache: Path) -> dict:
    import strategies
    from fixtures.builtin import BUILTIN_MODELS
    from strategies.base import ModelHandle, SessionOptions
    from strategies.shared import dotnet
    from tests.benchmarks.common import rotating

    settings = {"runtime": runtime}
    sessions, inputs, out = {}, {}, {"runtime": dotnet.runtime_label(runtime), "ort": {}, "embed": {}, "empty": {}}
    for model in {m for m, _ in ORT_CASES + EMBED_CASES}:
        handle = ModelHandle(BUILTIN_MODELS[model], 0)
        for name in (*ORT_ROUTES, "clr-embed"):
            if name == "clr-embed" and model not in {m for m, _ in EMBED_CASES}:
                continue
            s = strategies.get(name)
            art = None
            if s.needs_artifacts:
                art = cache / f"{name}-{model}"
                if not art.exists():
                    art.mkdir(parents=True)
                    s.prepare(handle, art)
            sessions[(name, model)] = s.open(handle, art, SessionOptions(1, settings=settings))
        for batch in {b for m, b in ORT_CASES + EMBED_CASES if m == model}:
            inputs[(model, batch)] = handle.example_inputs(batch)

    measures = {}
    for model, batch in ORT_CASES:
        for name in ORT_ROUTES:
            measures[f"{name}|{model}|{batch}"] = (
                lambda s=sessions[(name, model)], x=inputs[(model, batch)]: _median_of_calls(s, x, seconds))
    for model, batch in EMBED_CASES:
        measures[f"clr-embed|{model}|{batch}"] = (
            lambda s=sessions[("clr-embed", model)], x=inputs[(model, batch)]: _median_of_calls(s, x, seconds))

    ib = dotnet.load(runtime)

    def noop() -> None:
        return None

    from strategies.clr_capi.strategy import libpython

    capi = ib.CapiRunner(str(libpython()), id(noop))
    n_empty = 20000
    measures["empty|capi"] = lambda: float(capi.EmptyCalls(id(noop), n_empty))
    measures["empty|pythonnet"] = lambda: float(ib.Runner.EmptyCallsIntoPython(noop, n_empty))
    got = rotating(measures, 3)  # three rotating passes inside the child; the parent rounds over children
    for key, vals in got.items():
        kind, *rest = key.split("|")
        m = statistics.median(vals)
        if kind == "empty":
            out["empty"][rest[0]] = m
        elif kind == "clr-embed":
            out["embed"][f"{rest[0]}|{rest[1]}"] = m
        else:
            out["ort"][f"{kind}|{rest[0]}|{rest[1]}"] = m
    for s in sessions.values():
        s.close()
    capi.Dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4, help="child processes per runtime (alternating order)")
    ap.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    ap.add_argument("--child", choices=("coreclr", "mono"), help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.seconds, Path(args.cache))), flush=True)
        return 0

    from strategies.shared import dotnet

    runtimes = [r for r in ("coreclr", "mono") if not dotnet.missing(r)]
    missing = {r: dotnet.missing(r) for r in ("coreclr", "mono") if dotnet.missing(r)}
    for r, why in missing.items():
        print(f"{r}: cannot run here: {why}")
    if not runtimes:
        return 1
    results: dict[str, list[dict]] = {r: [] for r in runtimes}
    with tempfile.TemporaryDirectory(prefix="interop-bench-clr-routes-") as cache:
        for i in range(args.rounds):
            for runtime in runtimes[i % len(runtimes):] + runtimes[:i % len(runtimes)]:
                p = subprocess.run([sys.executable, "-m", "tests.benchmarks.clr_routes", "--child", runtime,
                                    "--seconds", str(args.seconds), "--cache", cache],
                                   capture_output=True, text=True, timeout=900)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if p.returncode != 0 or line is None:
                    print(f"round {i + 1} on {runtime} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
                    return 1
                results[runtime].append(json.loads(line[7:]))
                print(f"round {i + 1}/{args.rounds} on {runtime} done", flush=True)

    med = statistics.median
    labels = {r: results[r][0]["runtime"] for r in runtimes}
    print(f"\n{args.rounds} rounds per runtime; medians of per-round medians, one intra-op thread")

    print("\n1. clr-onnxruntime against ONNX Runtime's floor (same ONNX file, same threads); target <= 1.10x")
    print(f"{'runtime':<22} {'model':<12} {'batch':>5} {'C# µs':>9} {'C++ µs':>9} {'Python µs':>10} {'C#/C++':>7} {'C#/Python':>9}")
    for r in runtimes:
        for model, batch in ORT_CASES:
            k = f"{model}|{batch}"
            cs = [x["ort"][f"clr-onnxruntime|{k}"] for x in results[r]]
            cpp = [x["ort"][f"cpp-onnxruntime|{k}"] for x in results[r]]
            py = [x["ort"][f"onnxruntime|{k}"] for x in results[r]]
            ratio_cpp = med([a / b for a, b in zip(cs, cpp)])
            ratio_py = med([a / b for a, b in zip(cs, py)])
            flag = "" if ratio_cpp <= 1.10 else "  <- above target"
            print(f"{labels[r]:<22} {model:<12} {batch:>5} {med(cs) / 1e3:>9.1f} {med(cpp) / 1e3:>9.1f} {med(py) / 1e3:>10.1f} "
                  f"{ratio_cpp:>6.2f}x {ratio_py:>8.2f}x{flag}")

    print("\n2. empty round trip C# -> CPython -> C# (GIL taken, no-op called, GIL released); target C API >= 2x cheaper")
    for r in runtimes:
        capi = [x["empty"]["capi"] for x in results[r]]
        pynet = [x["empty"]["pythonnet"] for x in results[r]]
        print(f"{labels[r]:<22} C API {med(capi):7.0f} ns   pythonnet Py.GIL()+Invoke {med(pynet):7.0f} ns   "
              f"{med([b / a for a, b in zip(capi, pynet)]):.2f}x cheaper")

    if len(runtimes) == 2:
        print("\n3. CoreCLR against Mono (ratio CoreCLR/Mono of medians, per round pairs)")
        print(f"{'route':<17} {'model':<6} {'batch':>5} {'CoreCLR µs':>11} {'Mono µs':>9} {'ratio':>7}")
        rows = [("clr-embed", m, b, lambda x, k: x["embed"][k]) for m, b in EMBED_CASES]
        rows += [("clr-onnxruntime", m, b, lambda x, k: x["ort"][f"clr-onnxruntime|{k}"]) for m, b in EMBED_CASES]
        for route, model, batch, get in rows:
            k = f"{model}|{batch}"
            core = [get(x, k) for x in results["coreclr"]]
            mono = [get(x, k) for x in results["mono"]]
            print(f"{route:<17} {model:<6} {batch:>5} {med(core) / 1e3:>11.1f} {med(mono) / 1e3:>9.1f} "
                  f"{med([a / b for a, b in zip(core, mono)]):>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
