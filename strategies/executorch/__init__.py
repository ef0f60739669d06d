"""ExecuTorch: the model lowered to a .pte with the XNNPACK backend, run by ExecuTorch's runtime."""

from strategies.executorch.strategy import ExecuTorchXnnpack

__all__ = ["ExecuTorchXnnpack"]
