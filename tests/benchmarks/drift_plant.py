"""A planted slow period against the two ways of comparing routes: today's cells, each measured alone at
its own moment (``[sampling] rounds = 0``), and the run's method, interleaved rounds of warm workers
(bench.rounds).

The plant slows every call on one CPU, the median included: a SCHED_FIFO process pinned to it that spins
10 µs and sleeps 30 µs (a plain busy loop does not do it: the scheduler's time slices leave the median
almost untouched). Its period is shorter than the calls, so it slows routes of different call lengths
about alike; a longer one does not (100 µs on, 100 µs off slowed torch's 45 µs calls 4x and ONNX
Runtime's 22 µs ones 1.1x, which changes the true ratio, and no method can pair that out). The rounds
are also run planted from the first round, which shows what the plant itself does to the ratio. torch and onnxruntime run on the MLP at batch 1, every process pinned to that CPU
(``--cpus``). Each method runs twice, quiet and planted; the plant starts halfway through:

- cells: after the first cell (torch) is written, so it lands on the second cell only;
- rounds: before the middle round, so half of the rounds run slow.

Printed: the onnxruntime/torch ratio of each, quiet and planted, and how far the plant moved it. Figures,
not a test (tests/test_drift_plant.py checks the plant's mechanics). Needs root (SCHED_FIFO):

    python -m tests.benchmarks.drift_plant [--cpu 0] [--rounds 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

PLANT = """
import ctypes, os, sys, time
os.sched_setaffinity(0, {%d})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
ctypes.CDLL("libc.so.6").prctl(29, 1)  # PR_SET_TIMERSLACK 1 ns: its sleeps end when asked, not 50 us later
end = time.monotonic() + %f
while time.monotonic() < end:
    t = time.perf_counter() + %f
    while time.perf_counter() < t:
        pass
    time.sleep(%f)
"""
SPIN_US, SLEEP_US = 10.0, 30.0  # a period shorter than the calls: it slows a 20 us call and a 50 us one about alike


@contextmanager
def planted(cpu: int, limit_s: float = 600.0, spin_us: float = SPIN_US, sleep_us: float = SLEEP_US):
    """The slow period: a real-time spinner on ``cpu`` (``spin_us`` on, ``sleep_us`` off) until the block ends
    (or ``limit_s``, whichever first)."""
    from plumbing.processes import die_with_parent, kill_group

    code = PLANT % (cpu, limit_s, spin_us * 1e-6, sleep_us * 1e-6)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            preexec_fn=die_with_parent)
    try:
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"the plant could not start (status {proc.returncode}; SCHED_FIFO needs root)")
        yield proc
    finally:
        kill_group(proc)


def cells_ratio(root: Path, cpu: int, plant: bool, budget: list[str]) -> float:
    """Today's method: `bench run`, each cell in its own worker; the plant starts once the first cell is written."""
    run = root / ("cells-planted" if plant else "cells-quiet")
    cmd = [sys.executable, "-m", "bench", "run", "--profile", "quick", "--models", "mlp", "--strategies", "torch,onnxruntime",
           "--batch-sizes", "1", "--scenarios", "latency", "--cpus", str(cpu), "--rematch-rounds", "0", "--rounds", "0",
           "--no-report",
           "--no-history", "--out", str(root), "--run-id", run.name, *budget]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    plant_ctx = None
    try:
        if plant:
            while proc.poll() is None and not list((run / "cells").glob("*.json")):
                time.sleep(0.05)
            plant_ctx = planted(cpu)
            plant_ctx.__enter__()
        _, err = proc.communicate(timeout=600)
    finally:
        if plant_ctx is not None:
            plant_ctx.__exit__(None, None, None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    if proc.returncode != 0:
        raise RuntimeError(f"bench run failed: {err[-500:]}")
    p50 = {}
    for f in (run / "cells").glob("*.json"):
        d = json.loads(f.read_text())
        p50[d["cell"]["strategy"]] = d["latency"]["p50"]
    return p50["onnxruntime"] / p50["torch"]


def rounds_ratio(root: Path, cpu: int, plant: bool, rounds: int, from_round: int | None = None
                 ) -> tuple[float, float, float, float]:
    """The run's method: the same matrix through the runner, its latency cells measured in interleaved rounds of
    warm workers (two processes per route); the plant from the middle round. (paired ratio, its 95% interval,
    and the ratio of the two cells' pooled medians)."""
    import strategies
    from bench import rematch
    from bench import rounds as rounds_mod
    from bench.config import build_config
    from bench.progress import Progress
    from bench.results import RunDir
    from bench.runner import Runner

    strategies.discover()
    cfg = build_config({}, {"profile": "quick", "models": "mlp", "strategies": "torch,onnxruntime", "batch_sizes": "1",
                            "scenarios": "latency", "cpus": str(cpu), "sampling": {"rounds": rounds, "turn_s": 0.1}},
                       strategies.names())
    start = rounds // 2 if from_round is None else from_round
    run = RunDir(root / (f"rounds-planted-{start}" if plant else "rounds-quiet"))
    run.path.mkdir(parents=True)
    run.write_meta({"run_id": run.id, "config": cfg.to_json()})
    runner = Runner(cfg, run, progress=Progress(0, stream=io.StringIO()))
    ctx: list = []

    def before_round(group, r: int) -> None:
        if plant and r == start and not ctx:
            ctx.append(planted(cpu))
            ctx[0].__enter__()

    runner.before_round = before_round
    try:
        runner.execute()
    finally:
        for c in ctx:
            c.__exit__(None, None, None)
    [g] = rounds_mod.read(run.path).values()
    p = rematch.paired(g.medians, "torch", "onnxruntime")
    if p is None:
        raise RuntimeError(f"the rounds gave no ratio: {g.errors}")
    p50 = {r.cell.strategy: r.p50 for r in run.load_cells(samples=False)}
    return p.ratio, p.low, p.high, p50["onnxruntime"] / p50["torch"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("drift plant: skipped (SCHED_FIFO needs root)")
        return 0
    budget = ["--max-time", "1.5", "--min-time", "1.0"]
    root = Path(tempfile.mkdtemp(prefix="interop-bench-drift-"))
    try:
        print(f"drift plant: a SCHED_FIFO spinner ({SPIN_US:g} µs on, {SLEEP_US:g} µs off) on CPU {args.cpu}, started halfway; "
              f"onnxruntime/torch on the MLP at batch 1, every process on CPU {args.cpu}")
        quiet, hit = cells_ratio(root, args.cpu, False, budget), cells_ratio(root, args.cpu, True, budget)
        print(f"  cells, one at a time:   quiet {quiet:.3f}   planted {hit:.3f}   moved {hit / quiet - 1:+.0%}")
        (q, ql, qh, qc), (h, hl, hh, hc), (f, fl, fh, fc) = (
            rounds_ratio(root, args.cpu, False, args.rounds), rounds_ratio(root, args.cpu, True, args.rounds),
            rounds_ratio(root, args.cpu, True, args.rounds, from_round=0))
        mid = (q * f) ** 0.5  # half the rounds quiet, half planted, paired: the geometric mean of the two
        print(f"  interleaved rounds, paired (what the decision ranks by): quiet {q:.3f} (95% {ql:.3f}-{qh:.3f})   "
              f"planted from the middle {h:.3f} (95% {hl:.3f}-{hh:.3f})   moved {h / q - 1:+.1%}")
        print(f"    the plant's own effect on the ratio (planted from the first round): {f:.3f} (95% {fl:.3f}-{fh:.3f}), "
              f"{f / q - 1:+.1%}; half planted, paired, should give {mid:.3f}: off by {h / mid - 1:+.1%} (target: under 3%)")
        print(f"  interleaved rounds, the cells' pooled medians: quiet {qc:.3f}   from the middle {hc:.3f} ({hc / qc - 1:+.1%})"
              f"   from the first {fc:.3f} ({fc / qc - 1:+.1%})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
