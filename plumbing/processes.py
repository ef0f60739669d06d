"""Child processes that never outlive their parent: workers, servers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess


def die_with_parent() -> None:
    """Use as ``preexec_fn``: the child gets SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG),
    so a crashed or killed parent leaves no worker or server behind."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with start_new_session=True and everything it started, then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL after grace_s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def describe_exit(rc: int | None) -> str:
    """How a child ended, in words: "died with signal SIGKILL", "exited with status 3", "ended"."""
    if rc is None:
        return "ended"
    if rc < 0:
        try:
            return f"died with signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"died with signal {-rc}"
    return f"exited with status {rc}"
