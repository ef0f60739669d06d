"""What machine and software a run measured: recorded with every run so results stay comparable."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from strategies.base import package_version

PACKAGES = ("torch", "numpy", "onnxruntime", "onnx", "onnxscript", "openvino", "executorch", "grpcio", "pythonnet", "pybind11",
            "pandas", "matplotlib", "psutil")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: Path) -> dict[str, str | bool | None]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD") if commit else None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def collect(strategy_versions: dict[str, dict[str, str]]) -> dict:
    import psutil

    freq = psutil.cpu_freq()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_mhz_max": round(freq.max) if freq and freq.max else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {p: package_version(p) for p in PACKAGES},
        "strategy_runtimes": strategy_versions,
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
        "git": git_commit(Path(__file__).resolve().parent.parent),
        "ci": os.environ.get("CI", "").lower() in ("1", "true", "yes"),
    }
