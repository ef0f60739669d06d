"""OpenVINO Runtime on the CPU device: the shared ONNX export (dynamic batch) converted to OpenVINO IR."""

from strategies.openvino.strategy import OpenVino

__all__ = ["OpenVino"]
