from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / ".test-output"  # git-ignored
# One artifact cache for the tests (in-process and in worker processes) and `nox -s bench`: keys are
# content hashes, so sharing is safe, and CI compiles the LibTorch extension and AOTI packages once.
CACHE = Path(os.environ.setdefault("BENCH_CACHE_DIR", str(ROOT / ".bench-cache")))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TAG = "INTEROP_BENCH_TEST_SESSION"  # inherited by every worker and server the tests start
os.environ[TAG] = str(os.getpid())

QUICK_STRATEGIES = ["torch", "onnxruntime", "cpp-onnxruntime", "openvino", "executorch", "grpc", "grpc-naive", "grpc-uds",
                    "libtorch-ts", "libtorch-aoti", "clr-embed", "clr-naive", "clr-onnxruntime", "clr-capi",
                    "clr-grpc"]  # the Mono variants and clr-grpc-uds run in test_clr_routes / test_clr_grpc
QUICK_MODELS = ["mlp", "cnn", "transformer"]
QUICK_PAYLOADS = ["1KiB", "64KiB", "1MiB"]

# Tiny budgets: the tests check behaviour, not figures.
FAST = ["--warmup", "0.02", "--min-time", "0.05", "--max-time", "0.15", "--concurrency-time", "0.15"]


def require_strategy(name: str):
    """The registered strategy, if it can run here. In CI an unavailable strategy fails the test
    (every strategy must run there); elsewhere it skips with the reason and the fix."""
    import strategies

    s = strategies.get(name)
    a = s.available()
    if not a.ok:
        if IN_CI:
            pytest.fail(f"strategy {name} must run in CI but is unavailable: {a.reason}")
        pytest.skip(f"{name} unavailable here: {a.reason}")
    return s


def bench_env() -> dict[str, str]:
    env = dict(os.environ, BENCH_CACHE_DIR=str(CACHE), PYTHONPATH=str(ROOT))
    return env


def run_bench(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=bench_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run shared by the report and results tests: every built-in model, every strategy,
    two batch sizes, two caller counts and a payload sweep."""
    out = tmp_path_factory.mktemp("quick")
    p = run_bench("run", "--models", ",".join(QUICK_MODELS), "--strategies", ",".join(QUICK_STRATEGIES),
                  "--batch-sizes", "1,4", "--concurrency", "1,2", "--payload-sizes", ",".join(QUICK_PAYLOADS),
                  "--out", str(out), "--run-id", "quick", *FAST, cwd=out, timeout=2400)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / "quick"


# enough samples that a rerun's noise stays inside the threshold's confidence bound
BUDGET = ["--warmup", "0.05", "--min-time", "0.3", "--max-time", "0.6", "--concurrency-time", "0.4"]
GATE_THRESHOLDS = ["--threshold", "150%", "--threshold-concurrent", "150%"]
MATRIX = ["--models", "mlp", "--strategies", "torch,slow-test", "--batch-sizes", "1", "--concurrency", "1,2",
          "--payload-sizes", "none", "--no-report"]


def _config(tmp: Path, delay_us: int) -> Path:
    p = tmp / f"delay{delay_us}.toml"
    p.write_text(f'plugins = ["tests.plugins.faulty"]\n[strategy.slow-test]\ndelay_us = {delay_us}\n')
    return p


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base run, then two runs gated against it with --baseline: an identical rerun
    (gate-rerun.txt) and one with 400 µs planted in every slow-test call (gate.txt).

    The gate's threshold here is 150%: on the shared 2-vCPU machine CI runs on, the same call runs
    up to 1.97x slower for seconds at a time, so an unchanged cell measured once for the base can
    differ by that much from every later measurement. The planted slowdown is 5.9-6.7x. How often
    the default 10% cries wolf is a figure (tests/benchmarks/compare_false_alarms.py), not a test."""
    root = tmp_path_factory.mktemp("compare")
    p = run_bench("run", "--config", str(_config(root, 0)), *MATRIX, *BUDGET, "--out", str(root), "--run-id", "base", cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    for run_id, delay, gate in (("rerun", 0, "gate-rerun.txt"), ("slow", 400, "gate.txt")):
        p = run_bench("run", "--config", str(_config(root, delay)), *MATRIX, *BUDGET, "--out", str(root),
                      "--run-id", run_id, "--baseline", "base", *GATE_THRESHOLDS, cwd=root)
        (root / gate).write_text(f"{p.returncode}\n{p.stdout}\n{p.stderr}")
    return root


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_outlives_its_process():
    """Mono's /dev/shm/mono.PID of a worker the tests killed (the CLR crash tests) must not be left behind."""
    yield
    import glob

    import psutil

    stale = [f for f in glob.glob("/dev/shm/mono.*") if f.rsplit(".", 1)[-1].isdigit()
             and not psutil.pid_exists(int(f.rsplit(".", 1)[-1]))]
    assert not stale, f"shared-memory files of processes that are gone: {stale}"


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_tests():
    yield
    import psutil

    time.sleep(0.5)  # let killed children be reaped
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            ours = p.pid != os.getpid() and p.environ().get(TAG) == str(os.getpid())
            if ours and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert not left, "processes the tests started are still running:\n" + "\n".join(left)
