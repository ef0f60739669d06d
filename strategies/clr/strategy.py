"""A .NET application calling the PyTorch model: the CLR (CoreCLR .NET 8 by default, or Mono) hosted
in the worker through pythonnet, C# code (Runner.cs) holding its data in .NET arrays and calling the
model through Python.Runtime under Py.GIL(), the "C# application embeds Python" pattern. The timing
loop and the concurrent callers run inside the CLR (ClosedLoop.cs).

``ClrStrategy`` is the base of every clr-* strategy: the runtime setting (``--clr-runtime``, or
NAME@mono / NAME@coreclr side by side), the shared build, and the closed loop in C# threads.

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
    Arrivals,
    Availability,
    CallTimings,
    CliFlag,
    LoadTimings,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)

RUNTIME_FLAG = CliFlag("--clr-runtime", "runtime",
                       "the CLR of every clr-* strategy: coreclr (.NET 8, the default where installed) or mono; "
                       "NAME@mono / NAME@coreclr in --strategies put both side by side", "coreclr|mono")


def runtime_of(settings: Any) -> str:
    from strategies.shared import dotnet

    return dotnet.check_runtime(settings.get("runtime") or dotnet.default_runtime())


def closed_loop_in_clr(ib: Any, net_callers: list[Any], duration_s: float, warmup_s: float,
                       arrivals: Arrivals | None = None, driver: str = "C# threads") -> tuple[LoadTimings, Any]:
    """N C# threads, one per .NET caller (InteropBench.ICaller), calling back to back inside the CLR
    (ClosedLoop.cs), or serving an open-loop schedule when ``arrivals`` is given; pythonnet releases
    the GIL for the call, so no Python thread runs the model."""
    from System import Array, Int64

    arr = Array[ib.ICaller](net_callers)
    if arrivals is not None:
        res = ib.ClosedLoop.RunOpen(arr, Array[Int64](arrivals.offsets_ns().tolist()), int(arrivals.warmup_n),
                                    int(arrivals.budget_ns), int(arrivals.max_over), int(arrivals.deadline_ns))
        send, done = (np.empty(len(res.SendNs), dtype=np.int64) for _ in range(2))
        if len(send):
            ib.ClosedLoop.CopyLongs(res.SendNs, send.ctypes.data)
            ib.ClosedLoop.CopyLongs(res.DoneNs, done.ctypes.data)
        return LoadTimings(np.empty(0, np.int64), 0.0, str(res.Error or ""), send, done, driver, bool(res.StoppedEarly)), {}
    res = ib.ClosedLoop.Run(arr, float(duration_s), float(warmup_s))
    lat = np.empty(len(res.LatencyNs), dtype=np.int64)
    if len(lat):
        ib.ClosedLoop.CopyLongs(res.LatencyNs, lat.ctypes.data)
    threads = {"managed": [int(t) for t in res.ManagedThreadIds], "native": [int(t) for t in res.NativeThreadIds]}
    return LoadTimings(lat, float(res.WallS), str(res.Error or "")), threads


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
    runs_arrivals = True  # ClosedLoop.RunOpen: the C# application's own threads serve the schedule

    def __init__(self, model: ModelHandle, options: SessionOptions, naive: bool) -> None:
        from strategies.shared import dotnet
        from strategies.torch.strategy import TorchSession

        self.runtime = runtime_of(options.settings)
        self._ib = dotnet.load(self.runtime)
        self.load_threads: dict[str, list[int]] = {}
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

    def run_load(self, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
                 arrivals: Arrivals | None = None) -> LoadTimings:
        """The callers are C# threads, each with its own .NET inputs, each taking the GIL per call."""
        net = []
        for _ in range(callers):
            arrays = [np.array(inputs[n], order="C", copy=True) for n in self.names]
            net.append(self.runner.NewCaller(self._invoke(dotnet_tensors, self._ib, arrays)))
        timings, threads = self._invoke(closed_loop_in_clr, self._ib, net, duration_s, warmup_s, arrivals,
                                        f"C# threads ({self.runtime})")
        self.load_threads = threads or self.load_threads
        return timings

    def memory_extra(self) -> dict[str, int]:
        return {"clr_managed_heap": int(self._ib.Runner.ManagedHeapBytes())}

    def describe(self) -> dict[str, Any]:
        from strategies.shared import dotnet

        return {"runtime": f"{dotnet.runtime_label(self.runtime)} via pythonnet {package_version('pythonnet')}",
                "callers": "C# threads (ClosedLoop.cs), each taking the GIL per call",
                "marshaling": "element by element" if self.naive else "bulk (pinned arrays, memcpy)",
                "clock": f"Stopwatch inside the CLR, {1e9 / self.frequency:g} ns ticks",
                **({"thread suspend": os.environ.get("MONO_THREADS_SUSPEND", "")} if self.runtime == "mono" else {})}


class ClrStrategy(Strategy):
    """The base of every clr-* strategy: which CLR, the C# build, and the runtime versions."""

    languages = ("csharp",)
    python_at_deployment = True  # overridden by routes with no Python in them

    needs_artifacts = True  # the compiled C# assembly, shared by every model
    prepare_hint = "the first one compiles the C# side with mcs, about two seconds"
    runtime_modules = ("pythonnet", "clr_loader")  # loading the CLR itself is open()'s
    settings_keys = ()  # and `runtime`, from RUNTIME_FLAG
    cli_flags = (RUNTIME_FLAG,)
    variants = ("coreclr", "mono")
    variant_key = "runtime"

    def fixed_runtime(self) -> str | None:
        """The runtime this strategy's name fixes (NAME@mono), if it does."""
        return self.name.partition("@")[2] or None

    def available(self) -> Availability:
        from strategies.shared import dotnet

        reason = dotnet.missing(self.fixed_runtime() or dotnet.default_runtime())
        return Availability(not reason, reason)

    def default_variant(self) -> str:
        from strategies.shared import dotnet

        return f"{dotnet.default_runtime()} ({dotnet.runtime_label(dotnet.default_runtime())})"

    def variant_reason(self, variant: str) -> str:
        from strategies.shared import dotnet

        return dotnet.missing(variant)

    #: the [strategy.NAME] settings of this route that are true or false
    bool_settings: ClassVar[tuple[str, ...]] = ()

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        """Every clr-* route's artifact: the one compiled assembly (cached by its sources' hash)."""
        from strategies.shared import dotnet

        (out_dir / "assembly.txt").write_text(f"{dotnet.build()}\n")

    def check_settings(self, settings: Any) -> None:
        from strategies.shared import dotnet

        for key in self.bool_settings:
            if key in settings and not isinstance(settings[key], bool):
                raise ValueError(f"{key} must be true or false, not {settings[key]!r}")
        if settings.get("runtime") is not None:
            dotnet.check_runtime(settings["runtime"])
            reason = dotnet.missing(settings["runtime"])
            if reason:
                raise ValueError(reason)

    def runtime_versions(self) -> dict[str, str]:
        from strategies.shared import dotnet

        versions = {"mono": dotnet.mono_version(), "pythonnet": package_version("pythonnet")}
        if self.fixed_runtime():
            versions["clr"] = dotnet.runtime_label(self.fixed_runtime())
        if dotnet.coreclr_root() is not None:
            versions["coreclr"] = dotnet.coreclr_version()
        return versions


class _Clr(ClrStrategy):
    naive: ClassVar[bool]

    def runtime_versions(self) -> dict[str, str]:
        return {**super().runtime_versions(), "torch": package_version("torch")}

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return ClrSession(model, options, self.naive)


@register
class ClrEmbed(_Clr):
    name = "clr-embed"
    summary = "C# (CoreCLR or Mono) calls torch through pythonnet (Py.GIL), bulk copies of pinned arrays, timed in the CLR"
    naive = False


@register
class ClrNaive(_Clr):
    name = "clr-naive"
    summary = "as clr-embed, but data crosses element by element, as quick examples do"
    naive = True


class ClrCallerSession(Session):
    """A session whose C# side hands out callers (InteropBench.ICaller with TimeCalls, OutputCount,
    OutputDType, OutputShape, CopyOutput), each holding one caller's own .NET inputs: clr-onnxruntime's
    and clr-capi's. Subclasses set ``phases`` and implement ``new_caller``."""

    runs_arrivals = True  # ClosedLoop.RunOpen: the C# application's own threads serve the schedule

    def __init__(self, model: ModelHandle, options: SessionOptions, runtime: str | None = None) -> None:
        from strategies.shared import dotnet

        self.runtime = runtime or runtime_of(options.settings)
        self._ib = dotnet.load(self.runtime)
        self.names = [t.name for t in model.spec.inputs]
        self.outputs = list(model.spec.outputs)
        self._lock = threading.Lock()
        self._callers: dict[tuple[int, ...], tuple[list[np.ndarray], Any]] = {}
        self._retired: list[tuple[list[np.ndarray], Any]] = []
        self.load_threads: dict[str, list[int]] = {}

    def new_caller(self, dtypes: Any, shapes: Any, addresses: Any) -> Any:
        raise NotImplementedError

    def _new_caller(self, arrays: list[np.ndarray]) -> Any:
        from System import Array, Int64, String

        shapes = Array.CreateInstance(Array[Int64], len(arrays))
        for i, a in enumerate(arrays):
            shapes[i] = Array[Int64]([int(d) for d in a.shape])
        return ClrSession._invoke(self.new_caller, Array[String]([a.dtype.name for a in arrays]), shapes,
                                  Array[Int64]([a.ctypes.data for a in arrays]))

    def _caller(self, inputs: Arrays) -> Any:
        """The C# caller holding these inputs as the application's own .NET arrays: copied once
        (untimed set-up, as data an application already holds), reused while the same arrays come."""
        arrays = [np.ascontiguousarray(inputs[n]) for n in self.names]
        key = (threading.get_ident(), *(id(a) for a in arrays))  # a C# caller is one thread's
        with self._lock:
            hit = self._callers.get(key)
        if hit is not None:
            return hit[1]
        caller = self._new_caller(arrays)
        with self._lock:
            if len(self._callers) >= 16:  # forgotten, not disposed: a thread may still be inside it (close() disposes)
                self._retired.append(self._callers.pop(next(iter(self._callers))))
            self._callers[key] = (arrays, caller)  # the arrays stay referenced, so their ids stay unique
        return caller

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        caller = self._caller(inputs)
        ClrSession._invoke(caller.CallOnce)
        out = {}
        for i, name in enumerate(self.outputs[: int(caller.OutputCount)]):
            arr = np.empty(tuple(int(d) for d in caller.OutputShape(i)), dtype=str(caller.OutputDType(i)))
            if arr.size:
                caller.CopyOutput(i, arr.ctypes.data)
            out[name] = arr
        return out

    def time_calls(self, inputs: Arrays, n: int) -> CallTimings:
        """n calls timed inside the CLR by Stopwatch: one crossing from Python for all of them."""
        caller = self._caller(inputs)
        raw = ClrSession._invoke(caller.TimeCalls, n)
        k = 1 + len(self.phases)  # each call: its latency, then its phases
        ns = np.empty(k * n, dtype=np.int64)
        self._ib.ClosedLoop.CopyLongs(raw, ns.ctypes.data)
        ns = ns.reshape(n, k)
        return CallTimings(ns[:, 0].copy(), {p: ns[:, i + 1].copy() for i, p in enumerate(self.phases)})

    def run_load(self, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
                 arrivals: Arrivals | None = None) -> LoadTimings:
        """The callers are C# threads, each with its own .NET inputs and outputs."""
        net: list[Any] = []
        try:
            for _ in range(callers):
                net.append(self._new_caller([np.array(inputs[n], order="C", copy=True) for n in self.names]))
            timings, threads = ClrSession._invoke(closed_loop_in_clr, self._ib, net, duration_s, warmup_s, arrivals,
                                                  f"C# threads ({self.runtime})")
            self.load_threads = threads or self.load_threads
        finally:
            for c in net:
                if hasattr(c, "Dispose"):
                    c.Dispose()
        return timings

    def memory_extra(self) -> dict[str, int]:
        from System import GC

        return {"clr_managed_heap": int(GC.GetTotalMemory(False))}

    def close(self) -> None:
        with self._lock:
            callers, self._callers = [*self._callers.values(), *self._retired], {}
            self._retired = []
        for _, c in callers:
            if hasattr(c, "Dispose"):
                c.Dispose()
