"""The model ported to C++: LibTorch run from a pybind11 extension, the model exported as
TorchScript (`libtorch-ts`, deprecated upstream) or compiled ahead of time by AOTInductor
(`libtorch-aoti`, its successor). Inputs and outputs cross without copies; the breakdown is timed
in C++."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from strategies import register
from strategies.base import (
    Arrays,
    Availability,
    ModelHandle,
    Session,
    SessionOptions,
    Strategy,
    package_version,
)

EXPORT_BATCH = 2  # torch.export specialises sizes 0 and 1
ARTIFACT = {"ts": "model.ts.pt", "aoti": "model.pt2"}


def export_torchscript(model: ModelHandle, path: Path) -> None:
    import torch

    from fixtures.loading import to_torch_inputs

    args = tuple(to_torch_inputs(model.spec, model.example_inputs(EXPORT_BATCH)))
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model.build(), args, strict=False, check_trace=False)
    torch.jit.save(traced, str(path))


def export_aoti(model: ModelHandle, path: Path) -> None:
    import torch

    from fixtures.loading import to_torch_inputs

    spec = model.spec
    args = tuple(to_torch_inputs(spec, model.example_inputs(EXPORT_BATCH)))
    program = torch.export.export(model.build(), args, dynamic_shapes=model.dynamic_shapes())
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))


class LibtorchSession(Session):
    phases = ("marshal_in", "compute", "marshal_out")

    def __init__(self, kind: str, artifacts: Path, model: ModelHandle, options: SessionOptions) -> None:
        from strategies.libtorch import build

        self._ext = build.load()
        self.runner = self._ext.Runner(kind, str(artifacts / ARTIFACT[kind]), options.threads, options.concurrency)
        self.order = [t.name for t in model.spec.inputs]
        self.outputs = list(model.spec.outputs)
        self._phases: dict[str, int] = {}
        self.kind = kind

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        outs, (t_in, t_compute, t_out) = self.runner.run([inputs[n] for n in self.order])
        self._phases = {"marshal_in": t_in, "compute": t_compute, "marshal_out": t_out}
        if len(outs) != len(self.outputs):
            raise RuntimeError(f"model returned {len(outs)} outputs, expected {len(self.outputs)} ({self.outputs})")
        return dict(zip(self.outputs, outs))

    def last_phases_ns(self) -> dict[str, int]:
        return self._phases

    def describe(self) -> dict[str, Any]:
        return {"artifact": "TorchScript (torch.jit.trace)" if self.kind == "ts" else "AOTInductor package",
                "extension": self._ext.__name__}


class _Libtorch(Strategy):
    languages = ("cpp",)
    python_at_deployment = False
    kind: ClassVar[str]
    runtime_modules = ("torch",)
    settings_keys = ()
    needs_artifacts = True
    concurrent_calls = True
    prepare_hint = "the first one compiles the C++ extension, about 30-60 s on two cores"

    def available(self) -> Availability:
        import shutil

        if shutil.which("c++") is None and shutil.which("g++") is None:
            return Availability(False, "no C++ compiler on PATH (apt-get install -y g++)")
        return Availability.missing_module("ninja", "pip install ninja")

    def runtime_versions(self) -> dict[str, str]:
        import subprocess

        try:
            cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            cxx = "unknown"
        return {"torch (libtorch)": package_version("torch"), "c++": cxx}

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:
        from strategies.libtorch import build

        t0 = time.perf_counter()
        build.build(verbose=True)
        t1 = time.perf_counter()
        (export_torchscript if self.kind == "ts" else export_aoti)(model, out_dir / ARTIFACT[self.kind])
        (out_dir / "build.json").write_text(json.dumps({"extension_s": t1 - t0, "export_s": time.perf_counter() - t1}))

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        assert artifacts is not None
        return LibtorchSession(self.kind, artifacts, model, options)


@register
class LibtorchTs(_Libtorch):
    name = "libtorch-ts"
    artifact = "TorchScript file"
    exporter = "torch.jit.trace"
    summary = "TorchScript (jit.trace) run by torch::jit::load in a C++ pybind11 extension, zero-copy both ways"
    kind = "ts"


@register
class LibtorchAoti(_Libtorch):
    name = "libtorch-aoti"
    artifact = "AOTInductor package (compiled .so)"
    exporter = "torch.export, compiled by AOTInductor"
    summary = "AOTInductor package (aoti_compile_and_package) run by AOTIModelPackageLoader in C++, zero-copy both ways"
    kind = "aoti"
