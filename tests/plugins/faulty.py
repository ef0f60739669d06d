"""Strategies that misbehave on purpose, registered through the plugin mechanism (as a user's own
strategy would be): they prove a failing strategy costs only its own cells."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from strategies import register
from strategies.base import Arrays, ModelHandle, Session, SessionOptions, Strategy
from strategies.torch.strategy import TorchSession


class _KillsItself(Session):
    """Runs the real model, then SIGKILLs its own process on the 3rd call (or [strategy.crash-test]
    after_calls), as a segfaulting runtime would."""

    def __init__(self, model: ModelHandle, threads: int, after: int = 3, after_s: float = 0.0) -> None:
        import time

        self.inner = TorchSession(model, threads)
        self.calls = 0
        self.after = after
        self.deadline = time.monotonic() + after_s if after_s else None

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        import time

        self.calls += 1
        if self.calls == self.after if self.deadline is None else time.monotonic() > self.deadline:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.run(inputs)


class _Wrong(TorchSession):
    """Correct shapes and dtypes, values off by 0.5: must be marked invalid, never ranked."""

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        return {k: v + np.asarray(0.5, dtype=v.dtype) for k, v in super().run(inputs).items()}


@register
class CrashTest(Strategy):
    name = "crash-test"
    summary = ("test only: kills its own worker process on the third call ([strategy.crash-test] after_calls), or on "
               "the first call after_s seconds after it opened; with once_file, only the first process to open does")
    settings_keys = ("after_calls", "after_s", "once_file")

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        after = int(options.settings.get("after_calls", 3))
        once = options.settings.get("once_file")
        if once:  # the first process to open creates the file and dies; every later one runs
            try:
                Path(once).open("x").close()
            except FileExistsError:
                after = 0
        return _KillsItself(model, options.threads, after, float(options.settings.get("after_s", 0.0)) if after else 0.0)


@register
class WrongTest(Strategy):
    name = "wrong-test"
    summary = "test only: returns outputs off by 0.5"

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return _Wrong(model, options.threads)


class _ServerDies(Session):
    """A real gRPC session whose server is SIGKILLed on the 5th call, as a crashed service would be."""

    def __init__(self, model: ModelHandle, options: SessionOptions) -> None:
        from strategies.grpc.strategy import GrpcSession

        self.inner = GrpcSession(model, options, "raw", "tcp")
        self.calls = 0

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == 5 and self.inner.server is not None:
            self.inner.server.kill()
        return self.inner.run(inputs)

    def pids(self) -> list[tuple[int, str]]:
        return self.inner.pids()

    def close(self) -> None:
        self.inner.close()


@register
class GrpcServerDies(Strategy):
    name = "grpc-dies-test"
    summary = "test only: the gRPC server is killed mid-cell"

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return _ServerDies(model, options)


class _ClrFailsFast(Session):
    """A real clr-embed session whose C# side calls Environment.FailFast on the 3rd call: the CLR
    itself goes down (the way an old Mono can crash), taking its worker process with it."""

    def __init__(self, model: ModelHandle, options: SessionOptions) -> None:
        from strategies.clr.strategy import ClrSession

        self.inner = ClrSession(model, options, naive=False)
        self.calls = 0

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == 3:
            from System import Environment

            Environment.FailFast("test: the CLR goes down mid-cell")
        return self.inner.run(inputs)

    def close(self) -> None:
        self.inner.close()


@register
class ClrCrashTest(Strategy):
    name = "clr-crash-test"
    summary = "test only: the CLR fails fast mid-cell"
    needs_artifacts = True
    variants = ("coreclr", "mono")
    variant_key = "runtime"

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        from strategies.shared import dotnet

        dotnet.build()

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return _ClrFailsFast(model, options)


class _Delayed(TorchSession):
    """Eager torch plus a busy-wait of ``delay_us`` per call: a known slowdown to plant."""

    def __init__(self, model: ModelHandle, threads: int, delay_us: float) -> None:
        super().__init__(model, threads)
        self.delay_ns = int(delay_us * 1000)

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        import time

        if self.delay_ns:
            end = time.perf_counter_ns() + self.delay_ns
            while time.perf_counter_ns() < end:
                pass
        return super().run(inputs)


@register
class SlowTest(Strategy):
    name = "slow-test"
    summary = "test only: eager torch plus [strategy.slow-test] delay_us of busy-waiting per call"
    settings_keys = ("delay_us",)

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return _Delayed(model, options.threads, float(options.settings.get("delay_us", 0)))


@register
class AllocatorSensitiveTest(Strategy):
    name = "malloc-sensitive-test"
    summary = ("test only: eager torch plus 2 ms of busy-waiting per call, unless the process runs under "
               "jemalloc (a planted ranking that depends on the allocator)")

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        import os

        under_jemalloc = "jemalloc" in os.environ.get("LD_PRELOAD", "")
        return _Delayed(model, options.threads, 0.0 if under_jemalloc else 2000.0)


@register
class TorchTwinTest(Strategy):
    """Eager torch under a second name: the same route twice, a tie the decision must not call a win."""

    name = "torch-twin-test"
    summary = "test only: the torch strategy under another name"
    settings_keys = ()

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return TorchSession(model, options.threads)
