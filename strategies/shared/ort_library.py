"""The onnxruntime wheel's native C library, for the routes that load it without Python (the C++ caller
links it, the C# caller P/Invokes it): found from the installed package, never imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class LibraryMissing(RuntimeError):
    """No usable libonnxruntime in this environment; the message says how to get it."""


def ort_library() -> Path:
    """The wheel's libonnxruntime.so.<version> (the full C library), found without importing onnxruntime."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise LibraryMissing("Python package 'onnxruntime' is not installed (pip install onnxruntime)")
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    found = sorted(capi.glob("libonnxruntime.so.*[0-9]"))
    if not found:
        raise LibraryMissing(f"no libonnxruntime.so.<version> in {capi}: this onnxruntime wheel ships no C library")
    return found[-1]
