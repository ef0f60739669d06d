"""One C allocator policy for every process a cell uses (its worker and any server it starts).

glibc's malloc serves a large block (over 128 KiB) with a fresh mmap and returns it to the OS on
free, and when it stops doing so depends on the order of earlier allocations. A strategy that
builds one fresh multi-MiB buffer per call (a gRPC message, an output tensor) then pays a page
fault per 4 KiB on some runs and not on others: on this project's 2-vCPU machines a bare grpcio
echo of a freshly built 16 MiB message took 46-48 ms, of one reused 16 MiB message 23-24 ms,
while the copy that built it took 1 ms. That is the allocator, not the strategy, and it is part of
the environment an application chooses, so it is a dimension of the matrix:

- ``default``: glibc as shipped, what an application gets unless its team changes it (the default);
- ``steady``: glibc told to keep freed memory for reuse (blocks up to 32 MiB from the heap);
- ``jemalloc`` and ``tcmalloc``: those allocators preloaded (``LD_PRELOAD``) from the OS packages,
  as PyTorch's CPU performance guide suggests.

Applied through the environment (glibc's variables, or LD_PRELOAD), so it holds from the first
allocation of each process and is inherited by the servers a worker starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util

POLICIES = ("default", "steady", "jemalloc", "tcmalloc")
DEFAULT = "default"
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit; larger blocks are mmap'd whatever the setting
TRIM_THRESHOLD = 2**30
STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
#: the preloaded allocators: (shared library, Debian package that ships it)
PRELOADED = {"jemalloc": ("libjemalloc.so.2", "libjemalloc2"), "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4")}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
ENV_KEYS = (*STEADY_ENV, "LD_PRELOAD")  # what a worker records of its policy


def of_run(config: dict) -> list[str]:
    """The policies a recorded run's config says it ran. Runs recorded before the setting existed ran
    glibc as shipped; runs recorded before it became a list ran one policy."""
    value = config.get("malloc", DEFAULT)
    return [value] if isinstance(value, str) else list(value)


def library(policy: str) -> str | None:
    """The preloaded allocator's shared library, where the OS has it."""
    import os

    name = PRELOADED[policy][0]
    return next((f"{d}/{name}" for d in LIB_DIRS if os.path.exists(f"{d}/{name}")), None)


def unavailable(policy: str) -> str:
    """Why ``policy`` cannot run here, with the command that fixes it; empty when it can."""
    if policy in PRELOADED and library(policy) is None:
        return f"{policy} needs {PRELOADED[policy][0]} (apt-get install -y {PRELOADED[policy][1]})"
    return ""


def env(policy: str) -> dict[str, str]:
    """Environment variables that give a new process ``policy``."""
    if policy == "steady":
        return dict(STEADY_ENV)
    if policy in PRELOADED:
        lib = library(policy)
        if lib is None:
            raise RuntimeError(unavailable(policy))
        return {"LD_PRELOAD": lib}
    return {}


def preload_env(inherited: str, policy: str) -> dict[str, str]:
    """The process's environment for ``policy`` given the LD_PRELOAD it inherited: any allocator a
    shell preloads (jemalloc, tcmalloc, under any file name) is dropped so it cannot relabel a cell,
    other preloads are kept, and a preloaded policy's library is added."""
    import re

    kept = [p for p in re.split(r"[:\s]+", inherited) if p and not re.match(r"lib(jemalloc|tcmalloc)", p.rsplit("/", 1)[-1])]
    own = env(policy)
    preload = [*kept, own.pop("LD_PRELOAD")] if "LD_PRELOAD" in own else kept
    return {**own, "LD_PRELOAD": ":".join(preload)} if preload else own


def describe(policy: str) -> str:
    if policy == "steady":
        return (f"steady: glibc keeps freed memory for reuse (mmap threshold {MMAP_THRESHOLD // 2**20} MiB, "
                f"trim threshold {TRIM_THRESHOLD // 2**30} GiB)")
    if policy in PRELOADED:
        return f"{policy}: {PRELOADED[policy][0]} preloaded (LD_PRELOAD) in every process of the cell"
    return "default: glibc malloc as shipped (large blocks mapped and unmapped per allocation), what an application gets"


def apply_here(policy: str) -> bool:
    """The same policy for this already-running process (for benchmarks that are not workers);
    children started afterwards get it through ``env``. False where the C library is not glibc."""
    import os

    if policy in PRELOADED:
        return False  # an allocator cannot be swapped under a running process
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
