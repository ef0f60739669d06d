"""Test strategies for the open-loop and slo scenarios, registered through the plugin mechanism:
one with a known capacity (a fixed service time, one request at a time), one that stalls once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from strategies import register
from strategies.base import Arrays, ModelHandle, Session, SessionOptions, Strategy
from strategies.torch.strategy import TorchSession


class _FixedService(Session):
    """One request at a time, each taking service_ms (sleeping, so the GIL is free): a server whose
    capacity is 1000 / service_ms requests per second. Outputs are the model's own for these inputs."""

    def __init__(self, model: ModelHandle, threads: int, service_ms: float, stall_at: int, stall_ms: float) -> None:
        self.inner = TorchSession(model, threads)
        self.service_s, self.stall_at, self.stall_s = service_ms / 1e3, stall_at, stall_ms / 1e3
        self.lock = threading.Lock()
        self.calls = 0
        self.out: dict[str, np.ndarray] | None = None

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        with self.lock:
            if self.out is None:
                self.out = self.inner.run(inputs)
            self.calls += 1
            end = time.perf_counter() + self.service_s + (self.stall_s if self.calls == self.stall_at else 0.0)
            while (left := end - time.perf_counter()) > 0:
                time.sleep(left)
            return self.out


@register
class FixedServiceTest(Strategy):
    name = "fixed-service-test"
    summary = "test only: one request at a time, each [strategy.fixed-service-test] service_ms long (a known capacity)"
    settings_keys = ("service_ms", "stall_at", "stall_ms")

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        s = options.settings
        return _FixedService(model, options.threads, float(s.get("service_ms", 5.0)), int(s.get("stall_at", 0)),
                             float(s.get("stall_ms", 0.0)))
