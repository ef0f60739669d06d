"""CPU time of every process a cell uses, from the kernel's own accounting (``/proc/PID/stat``:
user + system time of all the process's threads, the exited ones included), so a cell can say how
many CPU milliseconds one inference costs the machine: the client, a server, a runtime's threads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14 and 15 of stat)


@dataclass
class CpuMeter:
    """Snapshots of CPU time per watched process; ``since(mark)`` is what each used in between."""

    roles: dict[int, str] = field(default_factory=dict)

    def add(self, pid: int, role: str) -> None:
        self.roles.setdefault(pid, role)

    def mark(self) -> dict[int, float]:
        return {pid: t for pid in self.roles if (t := cpu_seconds(pid)) is not None}

    def since(self, mark: dict[int, float]) -> tuple[float, dict[str, float]]:
        """(total CPU seconds, per role) used since ``mark`` by the processes alive at both ends."""
        now = self.mark()
        by_role: dict[str, float] = {}
        for pid, t in now.items():
            if pid in mark:
                role = self.roles[pid]
                by_role[role] = by_role.get(role, 0.0) + max(0.0, t - mark[pid])
        return sum(by_role.values()), by_role
