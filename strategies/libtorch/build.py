"""Compiling runner.cpp against the installed torch (its headers, libraries and bundled pybind11;
another pybind11 compiles but breaks at run time), once, into the artifact cache."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from plumbing.cache import default_cache_dir
from strategies.base import package_version

SOURCE = Path(__file__).with_name("runner.cpp")


def extension_name() -> str:
    key = hashlib.sha256(SOURCE.read_bytes() + package_version("torch").encode()).hexdigest()[:12]
    return f"libtorch_runner_{key}"


def build_dir() -> Path:
    return default_cache_dir() / "libtorch-ext" / extension_name()


def built_library() -> Path | None:
    found = sorted(build_dir().glob(f"{extension_name()}*.so"))
    return found[0] if found else None


def build(verbose: bool = True) -> Path:
    """Compile if needed (about a minute on two cores; ninja shows progress in the prepare log)."""
    lib = built_library()
    if lib is not None:
        return lib
    from torch.utils import cpp_extension

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=extension_name(), sources=[str(SOURCE)], build_directory=str(out),
                       extra_cflags=["-O2"], verbose=verbose, is_python_module=True)
    lib = built_library()
    if lib is None:
        raise RuntimeError(f"C++ extension built but no library found in {out}")
    return lib


def load() -> ModuleType:
    """Import the compiled extension (torch first, for its shared libraries)."""
    import torch  # noqa: F401

    name = extension_name()
    if name in sys.modules:
        return sys.modules[name]
    lib = built_library() or build()
    spec = importlib.util.spec_from_file_location(name, lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
