"""Memory of every process a cell uses, from the kernel's own accounting (/proc), not tracemalloc,
which cannot see native allocators (torch, ONNX Runtime, a CLR)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def rss(pid: int) -> int:
    """Resident set size in bytes (0 if the process is gone)."""
    return _status(pid).get("VmRSS", 0)


def peak_rss(pid: int) -> int:
    """Kernel-tracked peak RSS (VmHWM) in bytes since start or the last reset_peak()."""
    return _status(pid).get("VmHWM", 0)


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (writing 5 to clear_refs); False where not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class ProcessMemory:
    pid: int
    role: str
    baseline: int = 0  # RSS when the cell started watching it
    peak: int = 0
    samples: list[int] = field(default_factory=list)

    @property
    def steady(self) -> int:
        """Median RSS over the samples taken while the cell was measuring."""
        if not self.samples:
            return 0
        s = sorted(self.samples)
        return s[len(s) // 2]


class MemoryTracker:
    """Watches the worker and the session's other processes. Sampling happens between timing rounds
    (no background thread competing for the GIL while the strategy is being timed); the peak comes
    from the kernel's VmHWM, so a spike between two samples is not missed."""

    def __init__(self) -> None:
        self.procs: dict[int, ProcessMemory] = {}
        self.add(os.getpid(), "worker")

    def add(self, pid: int, role: str) -> None:
        if pid not in self.procs:
            reset_peak(pid)
            self.procs[pid] = ProcessMemory(pid, role, baseline=rss(pid))

    def sample(self) -> None:
        for p in self.procs.values():
            value = rss(p.pid)
            if value:
                p.samples.append(value)

    def finish(self) -> None:
        for p in self.procs.values():
            p.peak = max(peak_rss(p.pid), max(p.samples, default=0), p.baseline)

    def to_json(self, extra: dict[str, int] | None = None) -> dict:
        procs = list(self.procs.values())
        worker = procs[0]
        return {
            "baseline_rss": worker.baseline,  # the worker before the strategy opened
            "steady_rss": sum(p.steady for p in procs),
            "peak_rss": sum(p.peak for p in procs),  # sum of per-process peaks
            "added_steady": sum(p.steady for p in procs) - worker.baseline,
            "added_peak": sum(p.peak for p in procs) - worker.baseline,
            "processes": [
                {"pid": p.pid, "role": p.role, "baseline": p.baseline, "steady": p.steady, "peak": p.peak}
                for p in procs
            ],
            "extra": dict(extra or {}),
        }
