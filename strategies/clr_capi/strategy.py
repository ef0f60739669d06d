from __future__ import annotations

import functools
import json
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from strategies import register
from strategies.base import Availability, ModelHandle, Session, SessionOptions, package_version
from strategies.clr.strategy import ClrCallerSession, ClrSession, ClrStrategy


def libpython() -> Path:
    """This interpreter's shared libpython, the library whose C API the C# side calls."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not soname:
        raise RuntimeError("this Python has no shared libpython (built without --enable-shared), "
                           "so C# cannot reach its C API by library")
    path = Path(libdir) / soname
    if not path.exists():
        raise RuntimeError(f"this Python's shared library {path} is missing")
    return path


@functools.lru_cache(maxsize=64)
def _parse_meta(meta: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The inputs' dtypes and shapes from the JSON text C# sends (the same text each call of a
    caller, so parsed once)."""
    return tuple((str(d["dtype"]), tuple(int(x) for x in d["shape"])) for d in json.loads(meta))


class ClrCapiSession(ClrCallerSession):
    """CapiRunner.cs calling a Python function through CPython's C API; the function runs the model
    as the torch strategy does (eager, inference mode) on NumPy views of the pinned .NET inputs."""

    phases = ("marshal_in", "compute", "marshal_out")

    def __init__(self, model: ModelHandle, options: SessionOptions) -> None:
        from strategies.torch.strategy import TorchSession

        super().__init__(model, options)
        self._torch = TorchSession(model, options.threads)
        run, names, outputs = self._torch.run, list(self.names), list(self.outputs)
        # torch.from_numpy warns (once) that a read-only buffer is shared: the model never writes its inputs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

        def call(meta: str, *views: memoryview) -> tuple[np.ndarray, ...]:
            arrays = {n: np.frombuffer(v, dtype=d).reshape(s) for n, v, (d, s) in zip(names, views, _parse_meta(meta))}
            out = run(arrays)
            return tuple(np.ascontiguousarray(out[k]) for k in outputs)

        self._call = call  # kept alive here: C# holds only its address (and a reference it took)
        self.capi = ClrSession._invoke(self._ib.CapiRunner, str(libpython()), id(call))
        self.capi.KeepThreadState = bool(options.settings.get("keep_thread_state", True))

    def new_caller(self, dtypes: Any, shapes: Any, addresses: Any) -> Any:
        return self.capi.NewCaller(dtypes, shapes, addresses)

    def describe(self) -> dict[str, Any]:
        from strategies.shared import dotnet

        return {"caller": "C# calling CPython's C API by P/Invoke (CapiRunner.cs), timed in the CLR; "
                          "concurrent callers are C# threads, each taking the GIL per call (PyGILState_Ensure)",
                "runtime": dotnet.runtime_label(self.runtime),
                "inputs": "memoryviews over pinned .NET arrays (buffer protocol, no copy); shapes and dtypes as JSON text",
                "outputs": "read through the buffer protocol, one memcpy each into reused .NET arrays",
                "library": f"{libpython().name}, called directly (no pythonnet in the call path)"}

    def close(self) -> None:
        super().close()
        self.capi.Dispose()


@register
class ClrCapi(ClrStrategy):
    settings_keys = ("keep_thread_state",)  # and `runtime`, from the flag
    bool_settings = ("keep_thread_state",)
    name = "clr-capi"
    summary = "C# embeds CPython through its C API (P/Invoke, GIL per call), zero-copy memoryviews in, buffer protocol out"

    def available(self) -> Availability:
        try:
            libpython()
        except RuntimeError as e:
            return Availability(False, str(e))
        return super().available()

    def runtime_versions(self) -> dict[str, str]:
        return {**super().runtime_versions(), "torch": package_version("torch")}

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return ClrCapiSession(model, options)
