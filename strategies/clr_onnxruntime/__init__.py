"""ONNX Runtime called from C# through its C API (OrtRunner.cs, the project's own small binding), on
the ONNX file the onnxruntime strategy exports: the route a C# team is most often told to take, with
no Python in the call path. Runs on CoreCLR or Mono; the timing loop and concurrent callers are C#."""

from strategies.clr_onnxruntime.strategy import ClrOnnxRuntime

__all__ = ["ClrOnnxRuntime"]
