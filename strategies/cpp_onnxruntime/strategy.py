from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from strategies import register
from strategies.base import (
    Arrays,
    Arrivals,
    Availability,
    CallTimings,
    LoadTimings,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)
from strategies.shared.onnx_export import (
    LEVELS,
    VARIANT_FLAG,
    check_ort_settings,
    describe_export,
    export_into,
    exporter_id,
    variant_for,
)
from strategies.shared.ort_library import LibraryMissing, ort_library

PHASES = ("wrap", "run", "unwrap")


class CppOrtSession(Session):
    """The C++ Runner with ONNX Runtime's session. Every number comes from the C++ clock; time_calls
    and run_load are the C++ application itself, with no Python between its calls."""

    runs_arrivals = True  # open_loop(): C++ threads serve the schedule

    phases = PHASES

    def __init__(self, artifacts: Path, model: ModelHandle, options: SessionOptions) -> None:
        from strategies.cpp_onnxruntime import build

        self._ext = build.load()
        self.order = [t.name for t in model.spec.inputs]
        self.outputs = list(model.spec.outputs)
        spinning = bool(options.settings.get("spinning", True))
        path, level, self._export = variant_for(artifacts, options.settings.get("variant"))
        self._variant = options.settings.get("variant") or self._export.get("chosen", "")
        self.runner = self._ext.Runner(str(path), options.threads, spinning, LEVELS[level], self.order, self.outputs)
        self._phases: dict[str, int] = {}
        self._threads = options.threads

    def _args(self, inputs: Arrays) -> list[np.ndarray]:
        return [inputs[n] for n in self.order]

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        outs, (t_wrap, t_run, t_unwrap) = self.runner.run(self._args(inputs))
        self._phases = {"wrap": t_wrap, "run": t_run, "unwrap": t_unwrap}
        return dict(zip(self.outputs, outs))

    def last_phases_ns(self) -> dict[str, int]:
        return self._phases

    def time_calls(self, inputs: Arrays, n: int) -> CallTimings:
        lat, phases = self.runner.time_calls(self._args(inputs), n)
        return CallTimings(lat, dict(zip(PHASES, phases)))

    def run_load(self, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
                 arrivals: Arrivals | None = None) -> LoadTimings:
        if arrivals is not None:
            send, done, error, early = self.runner.open_loop(self._args(inputs), callers, arrivals.offsets_ns(),
                                                             arrivals.warmup_n, arrivals.budget_ns, arrivals.max_over,
                                                             arrivals.deadline_ns)
            return LoadTimings(np.empty(0, np.int64), 0.0, error, send, done, "C++ threads", early)
        lat, wall, error = self.runner.closed_loop(self._args(inputs), callers, duration_s, warmup_s)
        return LoadTimings(lat, wall, error)

    def describe(self) -> dict[str, Any]:
        return {"caller": "C++ (Ort::Session::Run), timed in C++; concurrent callers are C++ threads",
                **describe_export(self._export, self._variant),
                "inputs": "Ort::Value over the NumPy buffer (no copy)",
                "outputs": "ORT-allocated; returned as views (no copy), read in place by the C++ loop",
                "library": f"libonnxruntime {self._ext.runtime_version()}, headers API {self._ext.api_version()}",
                "intra-op threads": self._threads}


@register
class CppOnnxRuntime(Strategy):
    languages = ("cpp",)
    python_at_deployment = False
    artifact = "ONNX file"
    exporter = "torch.onnx (dynamo or TorchScript exporter, whichever is fastest correct)"
    name = "cpp-onnxruntime"
    summary = "the onnxruntime strategy's ONNX file run from C++ (ORT C++ API), timing loop and callers in C++"
    needs_artifacts = True
    concurrent_calls = True
    prepare_hint = "the first one fetches ONNX Runtime's headers (npm) and compiles the C++ caller, about 20 s"
    cli_flags = (VARIANT_FLAG,)
    settings_keys = ("spinning",)  # and `variant`, from VARIANT_FLAG

    def available(self) -> Availability:
        import shutil

        for module in ("onnxruntime", "onnx", "onnxscript", "pybind11"):
            a = Availability.missing_module(module, f"pip install {module}")
            if not a.ok:
                return a
        if shutil.which("g++") is None and shutil.which("c++") is None:
            return Availability(False, "no C++ compiler on PATH (apt-get install -y g++)")
        from strategies.cpp_onnxruntime import build

        if build.built_library() is None and shutil.which("npm") is None:
            return Availability(False, "npm is not on PATH; it fetches ONNX Runtime's headers (apt-get install -y npm)")
        try:
            ort_library()
        except LibraryMissing as e:
            return Availability(False, str(e))
        if build.ort_version_ok():
            return Availability(False, build.ort_version_ok())
        return Availability(True)

    def load_runtime(self) -> None:
        """The runtime here is the wheel's libonnxruntime and the compiled caller (built at prepare)."""
        from strategies.cpp_onnxruntime import build

        build.load()

    def check_settings(self, settings) -> None:
        check_ort_settings(settings)

    def runtime_versions(self) -> dict[str, str]:
        from strategies.cpp_onnxruntime import build

        return {"onnxruntime (C library)": package_version("onnxruntime"), "ort headers": build.HEADERS_PACKAGE,
                "pybind11": package_version("pybind11"), "onnx export": exporter_id()}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        from plumbing.cache import default_cache_dir
        from strategies.cpp_onnxruntime import build

        t0 = time.perf_counter()
        build.build(verbose=True)
        t1 = time.perf_counter()
        export_into(model, out_dir, default_cache_dir())
        (out_dir / "build.json").write_text(json.dumps({"extension_s": t1 - t0, "export_s": time.perf_counter() - t1}))

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return CppOrtSession(artifacts, model, options)
