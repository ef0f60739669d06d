"""How the harness's own reading scales with the size of a run: a synthetic results folder of N typed
cell records (several models, batches, callers and strategies, 200 raw samples each) is summarised,
compared with itself and rendered, each timed, with the process's peak RSS. Figures, not a test:

    python -m tests.benchmarks.report_scale --cells 10000      # issue 29's target: each under 10 s, 500 MiB

The default size keeps `nox -s benchmarks` short."""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.record import Cell, CellResult, Correctness, Memory, OutputCheck, Status, Throughput
from bench.results import RunDir
from bench.stats import summarize
from plumbing.files import atomic_write_json

STRATEGIES = ("torch", "onnxruntime", "openvino", "executorch", "grpc", "grpc-uds", "libtorch-ts", "libtorch-aoti",
              "cpp-onnxruntime", "clr-onnxruntime", "clr-capi", "clr-embed", "clr-naive", "clr-grpc", "grpc-naive", "clr-grpc-uds")


def synthetic_run(folder: Path, n: int, seed: int = 0) -> RunDir:
    rng = np.random.default_rng(seed)
    run = RunDir(folder)
    cells = []
    i = 0
    while len(cells) < n:
        model, batch, callers = f"model{i // 64}", (1, 8, 64, 256)[(i // 16) % 4], 1 + (i // 8) % 2 * 3
        for s in STRATEGIES[: min(len(STRATEGIES), n - len(cells))]:
            cells.append(Cell(model, s, batch, 1, callers))
        i += 16
    for c in cells:
        ns = (rng.lognormal(np.log(1e5 * (1 + STRATEGIES.index(c.strategy) / 8)), 0.1, 200)).astype(np.int64)
        lat = summarize(ns / 1e9)
        run.write_cell(CellResult(
            c, Status.OK, latency=lat, samples_ns=ns.tolist(), throughput=Throughput.of(1 / lat.p50, c.batch),
            open_s=0.5, first_call_s=0.01, cold_start_s=0.51, payload_bytes=1024 * c.batch,
            memory=Memory(100 << 20, 300 << 20, 320 << 20, 200 << 20, 220 << 20),
            correctness=Correctness(True, 1e-4, 1e-3, {"y": OutputCheck(True, [c.batch, 4], "float32", 1e-6, 1e-6)})))
    atomic_write_json(run.path / "run.json", {
        "run_id": folder.name, "status": "complete", "cells": [c.to_json() for c in cells], "started": time.time(),
        "config": {"models": sorted({c.model for c in cells}), "strategies": list(STRATEGIES), "scenarios": ["latency"],
                   "seed": 0, "profile": "synthetic"}})
    return run


def _timed(label: str, fn) -> float:
    t0 = time.perf_counter()
    fn()
    s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {label:<22} {s:7.2f} s   peak RSS so far {peak:7.0f} MiB", flush=True)
    return s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1000)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="interop-bench-report-scale-"))
    try:
        print(f"report scale: {args.cells} synthetic cells ({len(STRATEGIES)} strategies, 200 samples each) in {root}")
        t0 = time.perf_counter()
        run = synthetic_run(root / "a", args.cells)
        shutil.copytree(run.path, root / "b")
        print(f"  {'written':<22} {time.perf_counter() - t0:7.2f} s")
        from bench.compare import compare_runs
        from reports import render

        _timed("load_cells", lambda: run.load_cells())
        _timed("summary (write)", lambda: run.write_summary())
        _timed("compare with itself", lambda: compare_runs(run, RunDir(root / "b"), 0.1, 0.05, 0.3, False))
        total = _timed("report (HTML + MD)", lambda: render(run))
        per = total / args.cells * 1e3
        print(f"  report: {per:.1f} ms per cell; at 10,000 cells about {per * 10:.0f} s (target: under 10 s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
