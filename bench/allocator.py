"""One C allocator policy for every process a cell uses (its worker and any server it starts).

glibc's malloc serves a large block (over 128 KiB) with a fresh mmap and returns it to the OS on
free, and when it stops doing so depends on the order of earlier allocations. A strategy that
builds one fresh multi-MiB buffer per call (a gRPC message, an output tensor) then pays a page
fault per 4 KiB on some runs and not on others: on this project's 2-vCPU machines a bare grpcio
echo of a freshly built 16 MiB message took 46-48 ms, of one reused 16 MiB message 23-24 ms,
while the copy that built it took 1 ms. That is the allocator, not the strategy, so by default
every cell runs with the policy a serving team would pick (``steady``): blocks up to 32 MiB come
from the heap and freed memory is kept for reuse. ``default`` leaves glibc as shipped, to measure
exactly that.

Applied through glibc's environment variables, so it holds from the first allocation of each
process and is inherited by the servers a worker starts. Other C libraries ignore them.
"""

from __future__ import annotations

import ctypes
import ctypes.util

POLICIES = ("steady", "default")
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit; larger blocks are mmap'd whatever the setting
TRIM_THRESHOLD = 2**30
STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def of_run(config: dict) -> str:
    """The policy a recorded run's config says it ran; runs recorded before the setting existed ran
    glibc as shipped."""
    return config.get("malloc", "default")


def env(policy: str) -> dict[str, str]:
    """Environment variables that give a new process ``policy``."""
    return dict(STEADY_ENV) if policy == "steady" else {}


def describe(policy: str) -> str:
    if policy == "steady":
        return (f"steady: glibc keeps freed memory for reuse (mmap threshold {MMAP_THRESHOLD // 2**20} MiB, "
                f"trim threshold {TRIM_THRESHOLD // 2**30} GiB)")
    return "default: glibc malloc as shipped (large blocks mapped and unmapped per allocation)"


def apply_here(policy: str) -> bool:
    """The same policy for this already-running process (for benchmarks that are not workers);
    children started afterwards get it through ``env``. False where the C library is not glibc."""
    import os

    os.environ.update(env(policy))
    if policy != "steady":
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
