"""Progress on stderr: a live line on a terminal, one line per finished cell elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    return f"{s // 3600:.0f}h{(s % 3600) // 60:02.0f}m"


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.width = width
        self.start = time.monotonic()
        self.tty = stream.isatty()
        self._live = False

    def _bar(self) -> str:
        filled = int(self.width * self.done / self.total)
        return "[" + "#" * filled + "." * (self.width - filled) + f"] {self.done}/{self.total}"

    def _eta(self) -> str:
        if not self.done:
            return ""
        elapsed = time.monotonic() - self.start
        return f" eta {fmt_duration(elapsed / self.done * (self.total - self.done))}"

    def note(self, text: str) -> None:
        """A message that stays (preparing artifacts, warnings)."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def begin(self, label: str) -> None:
        if self.tty:
            self._clear()
            self.stream.write(f"{self._bar()}{self._eta()}  {label} ...")
            self.stream.flush()
            self._live = True

    def finish(self, label: str, outcome: str) -> None:
        self.done += 1
        self._clear()
        print(f"{self._bar()}{self._eta()}  {label:<34} {outcome}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[2K")
            self._live = False
