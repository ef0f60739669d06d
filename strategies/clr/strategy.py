"""A .NET application calling the PyTorch model: Mono's CLR hosted in the worker through pythonnet,
C# code (Runner.cs) holding its data in .NET arrays and calling the model through Python.Runtime
under Py.GIL(), the "C# application embeds Python" pattern. The timing loop runs inside the CLR.

`clr-embed` moves data across in bulk (pinned arrays, one memcpy each way through the buffer
protocol); `clr-naive` converts element by element, as quick examples do."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from strategies import register
from strategies.base import (
    Arrays,
    Availability,
    CallTimings,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)


def dotnet_tensors(ib: Any, arrays: list[np.ndarray]) -> Any:
    """New .NET arrays (InteropBench.Tensor[]) holding copies of C-contiguous NumPy arrays."""
    from System import Array, Int64, String

    shapes = Array.CreateInstance(Array[Int64], len(arrays))
    for i, a in enumerate(arrays):
        shapes[i] = Array[Int64]([int(d) for d in a.shape])
    return ib.Runner.NewInputs(Array[String]([a.dtype.name for a in arrays]), shapes,
                               Array[Int64]([a.ctypes.data for a in arrays]))


class ClrSession(Session):
    phases = ("marshal_in", "compute", "marshal_out")

    def __init__(self, model: ModelHandle, options: SessionOptions, naive: bool) -> None:
        from strategies.clr import build
        from strategies.torch.strategy import TorchSession

        self._ib = build.load()
        self._torch = TorchSession(model, options.threads)  # the Python side: eager torch, as `torch` runs it
        names = [t.name for t in model.spec.inputs]
        self.outputs = list(model.spec.outputs)
        run, outputs = self._torch.run, self.outputs

        def call(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
            out = run(dict(zip(names, arrays)))
            return tuple(np.ascontiguousarray(out[k]) for k in outputs)

        self._call = call  # kept alive: C# holds a reference to it
        self.runner = self._ib.Runner(call, naive)
        self.names = names
        self.naive = naive
        self.frequency = int(self._ib.Runner.Frequency)
        self._lock = threading.Lock()
        self._dotnet: dict[tuple[int, ...], tuple[list[np.ndarray], Any]] = {}
        self._phases: dict[str, int] = {}

    # ---- the C# side's inputs ----

    def _dotnet_inputs(self, inputs: Arrays) -> Any:
        """The C# application's own .NET arrays for these inputs: copied once (untimed set-up, as data
        an application already holds) and reused while the caller passes the same arrays. Each caller
        gets its own set, so concurrent callers never see each other's data."""
        arrays = [np.ascontiguousarray(inputs[n]) for n in self.names]
        key = tuple(id(a) for a in arrays)
        with self._lock:
            hit = self._dotnet.get(key)
            if hit is not None:
                return hit[1]
        tensors = self._invoke(dotnet_tensors, self._ib, arrays)
        with self._lock:
            if len(self._dotnet) >= 16:  # a cell uses one input set; a long-lived caller must not grow this
                self._dotnet.pop(next(iter(self._dotnet)))
            self._dotnet[key] = (arrays, tensors)  # the arrays stay referenced, so their ids stay unique
        return tensors

    @staticmethod
    def _invoke(method: Any, *args: Any) -> Any:
        """Call into .NET; a .NET exception becomes a RuntimeError carrying its message and .NET stack
        trace (Runner.cs folds the traceback of a Python error raised under it into the message)."""
        try:
            return method(*args)
        except Exception as e:
            trace = getattr(e, "StackTrace", None)
            message = getattr(e, "Message", None) or str(e)
            kind = e.GetType().FullName if hasattr(e, "GetType") else type(e).__name__
            text = f"{kind}: {message}"
            if trace:
                text += f"\n--- .NET stack trace ---\n{trace}"
            raise RuntimeError(text) from None

    # ---- the Session contract ----

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        res = self._invoke(self.runner.Call, self._dotnet_inputs(inputs))
        to_ns = 1e9 / self.frequency
        self._phases = {"marshal_in": int(res.MarshalInTicks * to_ns), "compute": int(res.ComputeTicks * to_ns),
                        "marshal_out": int(res.MarshalOutTicks * to_ns)}
        out = {}
        for name, t in zip(self.outputs, res.Outputs):
            arr = np.empty(tuple(int(d) for d in t.Shape), dtype=str(t.DType))
            self._ib.Runner.CopyOut(t, arr.ctypes.data)
            out[name] = arr
        return out

    def last_phases_ns(self) -> dict[str, int]:
        return self._phases

    def time_calls(self, inputs: Arrays, n: int) -> CallTimings:
        """n calls timed inside the CLR by Stopwatch: one crossing from Python for all of them."""
        ticks = self._invoke(self.runner.TimeCalls, self._dotnet_inputs(inputs), n)
        ns = np.empty(4 * n, dtype=np.int64)
        self._ib.Runner.CopyLongs(ticks, ns.ctypes.data)
        ns = ns.reshape(n, 4)
        return CallTimings(ns[:, 0].copy(), {p: ns[:, i + 1].copy() for i, p in enumerate(self.phases)})

    def memory_extra(self) -> dict[str, int]:
        return {"clr_managed_heap": int(self._ib.Runner.ManagedHeapBytes())}

    def describe(self) -> dict[str, Any]:
        from strategies.clr import build

        return {"runtime": f"Mono {build.mono_version()} via pythonnet {package_version('pythonnet')}",
                "marshaling": "element by element" if self.naive else "bulk (pinned arrays, memcpy)",
                "clock": f"Stopwatch inside the CLR, {1e9 / self.frequency:g} ns ticks",
                "thread suspend": os.environ.get("MONO_THREADS_SUSPEND", "")}


class _Clr(Strategy):
    naive: ClassVar[bool]
    needs_artifacts = True  # the compiled C# assembly, shared by every model
    prepare_hint = "the first one compiles the C# side with mcs, about a second"
    runtime_modules = ("pythonnet", "clr_loader")  # loading the CLR itself is open()'s
    settings_keys = ()

    def available(self) -> Availability:
        from strategies.clr import build

        reason = build.missing()
        return Availability(not reason, reason)

    def runtime_versions(self) -> dict[str, str]:
        from strategies.clr import build

        return {"mono": build.mono_version(), "pythonnet": package_version("pythonnet"),
                "torch": package_version("torch")}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        from strategies.clr import build

        dll = build.build()
        (out_dir / "assembly.txt").write_text(f"{dll}\n")

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return ClrSession(model, options, self.naive)


@register
class ClrEmbed(_Clr):
    name = "clr-embed"
    summary = "C# on Mono calls torch through pythonnet (Py.GIL), bulk copies of pinned arrays, timed in the CLR"
    naive = False


@register
class ClrNaive(_Clr):
    name = "clr-naive"
    summary = "as clr-embed, but data crosses element by element, as quick examples do"
    naive = True
