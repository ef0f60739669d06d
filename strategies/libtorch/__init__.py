"""The model ported to C++: LibTorch in a pybind11 extension, TorchScript or AOTInductor."""

from strategies.libtorch.strategy import LibtorchAoti, LibtorchTs

__all__ = ["LibtorchAoti", "LibtorchTs"]
