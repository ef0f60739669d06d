from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from strategies import register
from strategies.base import Availability, ModelHandle, Session, SessionOptions, package_version
from strategies.clr.strategy import RUNTIME_FLAG, ClrCallerSession, ClrStrategy
from strategies.shared.onnx_export import (
    LEVELS,
    VARIANT_FLAG,
    check_ort_settings,
    describe_export,
    export_into,
    exporter_id,
    variant_for,
)
from strategies.shared.ort_library import ort_library


class ClrOrtSession(ClrCallerSession):
    """OrtRunner.cs over ONNX Runtime's C library: the session, its options and every call are C#."""

    phases = ("wrap_in", "run", "copy_out")

    def __init__(self, artifacts: Path, model: ModelHandle, options: SessionOptions) -> None:
        super().__init__(model, options)
        path, level, self._export = variant_for(artifacts, options.settings.get("variant"))
        self._variant = options.settings.get("variant") or self._export.get("chosen", "")
        self._reuse = bool(options.settings.get("reuse_outputs", True))
        self._threads = options.threads
        spinning = bool(options.settings.get("spinning", True))
        self.ort = self._invoke(self._ib.OrtRunner, str(ort_library()), str(path), options.threads, LEVELS[level], spinning)
        names = list(self.ort.InputNames)
        if sorted(names) != sorted(self.names):
            self.ort.Dispose()
            raise RuntimeError(f"the ONNX file's inputs {names} are not the model's {self.names}")
        self.names = names  # the order the C# caller passes them in
        self.outputs = list(self.ort.OutputNames)

    @staticmethod
    def _invoke(method: Any, *args: Any) -> Any:
        from strategies.clr.strategy import ClrSession

        return ClrSession._invoke(method, *args)

    def new_caller(self, dtypes: Any, shapes: Any, addresses: Any) -> Any:
        return self.ort.NewCaller(dtypes, shapes, addresses, self._reuse)

    def describe(self) -> dict[str, Any]:
        from strategies.shared import dotnet

        reused = any(bool(c.OutputsReused) for _, c in self._callers.values())
        return {"caller": "C# calling ONNX Runtime's C API (OrtRunner.cs, the project's own binding), timed in the CLR; "
                          "concurrent callers are C# threads",
                "runtime": dotnet.runtime_label(self.runtime),
                **describe_export(self._export, self._variant),
                "inputs": "pinned .NET arrays wrapped as tensors per call (CreateTensorWithDataAsOrtValue, no copy)",
                "outputs": ("preallocated pinned .NET arrays bound as Run's outputs (ORT writes into them, no copy)"
                            if reused else "ORT-allocated, copied into reused .NET arrays"),
                "library": f"libonnxruntime {self.ort.LibraryVersion}, C API version {self.ort.ApiVersion}",
                "intra-op threads": self._threads, "inter-op threads": 1}

    def close(self) -> None:
        super().close()
        self.ort.Dispose()


@register
class ClrOnnxRuntime(ClrStrategy):
    languages = ("csharp",)
    python_at_deployment = False
    artifact = "ONNX file"
    exporter = "torch.onnx (dynamo or TorchScript exporter, whichever is fastest correct)"
    name = "clr-onnxruntime"
    summary = "C# calls ONNX Runtime's C API on the onnxruntime strategy's ONNX file, no Python in the call path"
    prepare_hint = "the first one exports the model to ONNX (shared with onnxruntime) and compiles the C# side"
    concurrent_calls = True
    cli_flags = (RUNTIME_FLAG, VARIANT_FLAG)
    bool_settings = ("reuse_outputs",)
    settings_keys = ("spinning", "reuse_outputs")  # and `runtime`, `variant` from the flags

    def available(self) -> Availability:
        for module in ("onnxruntime", "onnx", "onnxscript"):
            a = Availability.missing_module(module, f"pip install {module}")
            if not a.ok:
                return a
        try:
            ort_library()
        except RuntimeError as e:
            return Availability(False, str(e))
        return super().available()

    def check_settings(self, settings: Any) -> None:
        super().check_settings(settings)
        check_ort_settings(settings)

    def runtime_versions(self) -> dict[str, str]:
        return {**super().runtime_versions(), "onnxruntime (C library)": package_version("onnxruntime"),
                "onnx export": exporter_id()}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        from plumbing.cache import default_cache_dir
        from strategies.shared import dotnet

        t0 = time.perf_counter()
        dotnet.build()
        t1 = time.perf_counter()
        export_into(model, out_dir, default_cache_dir())
        (out_dir / "build.json").write_text(json.dumps({"assembly_s": t1 - t0, "export_s": time.perf_counter() - t1}))

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return ClrOrtSession(artifacts, model, options)
