"""Building the C++ caller: ONNX Runtime's official headers from a registry package, the C library
from the onnxruntime wheel, pybind11 from PyPI, compiled once by the system's g++ into the artifact
cache (keyed by the source, the headers' package and the library's version).

Nothing of ONNX Runtime is kept in this repository. The wheel has the library but no headers; the
npm package below carries ONNX Runtime's release headers (C and C++ API). Headers of an older API
version run on a newer library: the C API's function table is only ever appended to, and the
library serves any version up to its own."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

from bench.cache import default_cache_dir
from strategies.base import package_version

SOURCE = Path(__file__).with_name("runner.cpp")
HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"  # npm: ONNX Runtime's release headers (API 29)
HEADERS_DIR_IN_PACKAGE = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
HEADERS_NEEDED = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h", "onnxruntime_float16.h",
                  "onnxruntime_run_options_config_keys.h", "onnxruntime_session_options_config_keys.h",
                  "onnxruntime_ep_c_api.h", "onnxruntime_env_config_keys.h", "onnxruntime_error_code.h",
                  "onnxruntime_ep_device_ep_metadata_keys.h")
SONAME = "libonnxruntime.so.1"


class BuildError(RuntimeError):
    """The C++ caller could not be built; the message says what is missing and how to get it."""


def ort_library() -> Path:
    """The wheel's libonnxruntime.so.<version> (the full C library), found without importing onnxruntime."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("Python package 'onnxruntime' is not installed (pip install onnxruntime)")
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    found = sorted(capi.glob("libonnxruntime.so.*[0-9]"))
    if not found:
        raise BuildError(f"no libonnxruntime.so.<version> in {capi}: this onnxruntime wheel ships no C library")
    return found[-1]


def _key() -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{HEADERS_PACKAGE}|{package_version('onnxruntime')}|{package_version('pybind11')}|{sys.version_info[:2]}".encode())
    return h.hexdigest()[:12]


def module_name() -> str:
    return f"ort_runner_{_key()}"


def build_dir() -> Path:
    return default_cache_dir() / "cpp-onnxruntime" / module_name()


def built_library() -> Path | None:
    lib = build_dir() / f"{module_name()}.so"
    return lib if lib.exists() else None


def fetch_headers(dest: Path) -> Path:
    """ONNX Runtime's headers from the npm registry (`npm pack`), only the files the build needs,
    each written by us from the archive (no extraction of arbitrary paths)."""
    include = dest / "include"
    if (include / "onnxruntime_cxx_api.h").exists():
        return include
    if shutil.which("npm") is None:
        raise BuildError("npm is not on PATH; it fetches ONNX Runtime's headers (apt-get install -y npm)")
    with tempfile.TemporaryDirectory(prefix="ort-headers-") as tmp:
        p = subprocess.run(["npm", "pack", HEADERS_PACKAGE, "--silent", "--pack-destination", tmp],
                           capture_output=True, text=True, timeout=300)
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if p.returncode != 0 or not tgz:
            raise BuildError(f"npm pack {HEADERS_PACKAGE} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
        staging = dest / f"include.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tgz[0]) as tar:
            for name in HEADERS_NEEDED:
                member = tar.extractfile(HEADERS_DIR_IN_PACKAGE + name)
                if member is None:
                    raise BuildError(f"{HEADERS_PACKAGE} has no {name}")
                (staging / name).write_bytes(member.read())
        if include.exists():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, include)
    return include


def build(verbose: bool = True) -> Path:
    """Compile if needed (about 20 s on two cores)."""
    lib = built_library()
    if lib is not None:
        return lib
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise BuildError("no C++ compiler on PATH (apt-get install -y g++)")
    try:
        import pybind11
    except ImportError as e:
        raise BuildError("Python package 'pybind11' is not installed (pip install pybind11)") from e
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    include = fetch_headers(default_cache_dir() / "cpp-onnxruntime" / "headers")
    ort = ort_library()
    link = out / SONAME  # the library's soname, which the wheel does not ship: the extension finds it here
    if not link.exists():
        link.symlink_to(ort)
    name = module_name()
    tmp = out / f"{name}.so.tmp-{os.getpid()}"
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", f"-DORT_RUNNER_MODULE={name}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}", f"-I{include}",
           str(SOURCE), "-o", str(tmp), str(link), "-Wl,-rpath,$ORIGIN", "-pthread"]
    if verbose:
        print(" ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[:300])
        raise BuildError(f"compiling {SOURCE.name} failed: {first}")
    os.replace(tmp, out / f"{name}.so")
    return out / f"{name}.so"


def load() -> ModuleType:
    """Import the compiled extension, with the wheel's library loaded first by path."""
    name = module_name()
    if name in sys.modules:
        return sys.modules[name]
    lib = built_library() or build()
    ctypes.CDLL(str(ort_library()), mode=ctypes.RTLD_GLOBAL)
    spec = importlib.util.spec_from_file_location(name, lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
