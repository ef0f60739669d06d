"""Results in the formats tools people already use read:

- pytest-benchmark's JSON (``pytest-benchmark compare`` reads it, and ``--benchmark-compare`` can use
  it as a saved run): one benchmark per cell, stats in seconds from the raw samples;
- github-action-benchmark's ``customSmallerIsBetter``: one entry per cell, p50 in µs.

A cell's parts (a length bucket of the shapes scenario) are listed as cells of their own (``bench.record.with_parts``).
"""

from __future__ import annotations

import math
import platform
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.record import with_parts
from bench.results import RunDir
from bench.scenarios import LEGACY

PARAMS = ("scenario", "point", "model", "strategy", "batch", "threads", "concurrency", "malloc")


def _stats(samples_ns: list[int]) -> dict[str, Any]:
    """pytest-benchmark's stats block (seconds), computed the way it computes them."""
    x = np.sort(np.asarray(samples_ns, dtype=np.float64) / 1e9)
    n = len(x)
    mean = float(x.mean())
    stddev = float(x.std(ddof=1)) if n > 1 else 0.0
    q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    inside = x[(x >= lo) & (x <= hi)]
    iqr_out = int(n - len(inside))
    std_out = int(np.sum(np.abs(x - mean) > stddev)) if stddev else 0
    return {
        "min": float(x[0]), "max": float(x[-1]), "mean": mean, "stddev": stddev, "rounds": n,
        "median": median, "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_out,
        "stddev_outliers": std_out, "outliers": f"{std_out};{iqr_out}",
        "ld15iqr": float(inside[0]) if len(inside) else float(x[0]),
        "hd15iqr": float(inside[-1]) if len(inside) else float(x[-1]),
        "ops": 1 / mean if mean > 0 else math.inf, "total": float(x.sum()), "iterations": 1,
    }


def to_pytest_benchmark(run: RunDir) -> dict[str, Any]:
    meta = run.meta()
    env = meta.get("environment", {})
    git = env.get("git") or {}
    benchmarks = []
    for r in with_parts(run.load_cells()):
        if not r.ok or not r.samples_ns:
            continue
        c = r.cell
        benchmarks.append({
            "group": f"{c.model} b{c.batch} t{c.threads} c{c.concurrency}" + (f" {c.malloc}" if c.malloc else "")
                     + (f" {c.scenario}" + (f"@{c.point}" if c.point else "") if c.scenario not in LEGACY else ""),
            "name": c.id, "fullname": f"interop-bench::{c.id}",
            "params": {k: getattr(c, k) for k in PARAMS},
            "param": c.id, "extra_info": {"throughput_samples_per_s": r.samples_per_s,
                                          "cold_start_s": r.cold_start_s,
                                          "cpu_s_per_inference": r.cpu.s_per_inference if r.cpu else None,
                                          **r.figures},
            "options": {"disable_gc": False, "timer": "perf_counter_ns", "min_rounds": 1, "max_time": None,
                        "min_time": None, "precision": None, "confidence": None, "warmup": True},
            "stats": _stats(r.samples_ns),
        })
    return {
        "machine_info": {"node": env.get("hostname", ""), "processor": env.get("cpu_model", ""),
                         "machine": platform.machine(), "python_implementation": env.get("python_implementation", ""),
                         "python_version": env.get("python", ""), "system": env.get("os", ""),
                         "cpu": {"brand_raw": env.get("cpu_model", ""), "count": env.get("logical_cores")}},
        "commit_info": {"id": git.get("commit") or "unversioned", "dirty": bool(git.get("dirty")),
                        "branch": git.get("branch") or "(unknown)", "project": "interop-bench",
                        "time": env.get("timestamp"), "author_time": None},
        "benchmarks": benchmarks,
        "datetime": env.get("timestamp") or datetime.now(UTC).isoformat(),
        "version": "5.1.0",
    }


def to_github_action(run: RunDir) -> list[dict[str, Any]]:
    out = []
    for r in with_parts(run.load_cells(samples=False)):
        lat = r.latency
        if not r.ok or lat is None:
            continue
        entry = {"name": f"{r.id} p50", "unit": "us", "value": round(lat.p50 * 1e6, 3)}
        if lat.ci_low is not None and lat.ci_high is not None:
            entry["range"] = f"± {(lat.ci_high - lat.ci_low) * 1e6 / 2:.3f}"
        p99 = f"p99 {lat.p99 * 1e6:.1f} us" if lat.p99 is not None else "p99 not estimable"
        entry["extra"] = f"{p99}; {lat.n} samples"
        out.append(entry)
    return out
