"""ONNX export (torch.onnx dynamo exporter, dynamic batch) run by ONNX Runtime's CPU provider."""

from strategies.onnxruntime.strategy import OnnxRuntime

__all__ = ["OnnxRuntime"]
