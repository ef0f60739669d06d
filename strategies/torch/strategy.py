from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from strategies import register
from strategies.base import Arrays, ModelHandle, Session, SessionOptions, Strategy, package_version


class TorchSession(Session):
    def __init__(self, model: ModelHandle, threads: int) -> None:
        import torch

        from fixtures.loading import outputs_to_dict

        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != 1:
            with contextlib.suppress(RuntimeError):  # only settable before any inter-op work started
                torch.set_num_interop_threads(1)
        self._torch = torch
        self._module = model.build()
        self._names = tuple(t.name for t in model.spec.inputs)
        self._outputs = model.spec.outputs
        self._to_dict = outputs_to_dict

    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(inputs[n]) for n in self._names]  # shares the NumPy buffer
        with torch.inference_mode():
            out = self._to_dict(self._module(*args), self._outputs)
        return {k: v.numpy() for k, v in out.items()}  # shares the tensor's buffer


@register
class TorchEager(Strategy):
    languages = ("python",)
    python_at_deployment = True
    runtime_modules = ("torch",)
    settings_keys = ()
    name = "torch"
    summary = "eager PyTorch in the calling process, inference mode, zero-copy NumPy<->tensor"

    def runtime_versions(self) -> dict[str, str]:
        return {"torch": package_version("torch")}

    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        return TorchSession(model, options.threads)
