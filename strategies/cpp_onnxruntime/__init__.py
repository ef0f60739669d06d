"""ONNX Runtime called from C++ (its C++ API over the wheel's C library), on the same ONNX file as the
Python onnxruntime strategy; the timing loop and concurrent callers are C++."""

from strategies.cpp_onnxruntime.strategy import CppOnnxRuntime

__all__ = ["CppOnnxRuntime"]
