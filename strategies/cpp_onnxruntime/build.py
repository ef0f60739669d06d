"""Building the C++ caller: ONNX Runtime's official headers from a registry package, the C library
from the onnxruntime wheel, pybind11 from PyPI, compiled once by the system's g++ into the artifact
cache (keyed by the source, the headers' package and the library's version).

Nothing of ONNX Runtime is kept in this repository. The wheel has the library but no headers; the
npm package below (a Unity plugin that redistributes ONNX Runtime's release build) carries its C and
C++ API headers. The package is checked against the sha512 its registry entry records, so a
different tarball under the same name is refused, and only the header files are taken from it.
Headers of an older API version run on a newer library: the C API's function table is only ever
appended to, and the library serves any version up to its own (the module checks that at import)."""

from __future__ import annotations

import contextlib
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

from plumbing.cache import default_cache_dir
from strategies.base import package_version
from strategies.shared.ort_library import ort_library

SOURCE = Path(__file__).with_name("runner.cpp")
HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"  # npm: ONNX Runtime's release headers (API 29)
#: the registry's recorded integrity of that tarball (`npm view PACKAGE dist.integrity`)
HEADERS_INTEGRITY = "sha512-BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
MIN_ORT = (1, 29)  # the headers' API version: an older library has no function table for it
HEADERS_DIR_IN_PACKAGE = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
HEADERS_NEEDED = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h", "onnxruntime_float16.h",
                  "onnxruntime_run_options_config_keys.h", "onnxruntime_session_options_config_keys.h",
                  "onnxruntime_ep_c_api.h", "onnxruntime_env_config_keys.h", "onnxruntime_error_code.h",
                  "onnxruntime_ep_device_ep_metadata_keys.h")
SONAME = "libonnxruntime.so.1"


class BuildError(RuntimeError):
    """The C++ caller could not be built; the message says what is missing and how to get it."""


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
        import base64
        import hashlib as _hashlib

        digest = "sha512-" + base64.b64encode(_hashlib.sha512(tgz[0].read_bytes()).digest()).decode()
        if digest != HEADERS_INTEGRITY:
            raise BuildError(f"{HEADERS_PACKAGE} from the registry does not match its recorded integrity "
                             f"({digest[:24]}... instead of {HEADERS_INTEGRITY[:24]}...); refusing its headers")
        staging = dest / f"include.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(tgz[0]) as tar:
                for name in HEADERS_NEEDED:
                    try:
                        member = tar.extractfile(HEADERS_DIR_IN_PACKAGE + name)
                    except KeyError:
                        member = None
                    if member is None:
                        raise BuildError(f"{HEADERS_PACKAGE} has no {name}")
                    (staging / name).write_bytes(member.read())
            try:
                os.replace(staging, include)
            except OSError:  # another build put them there first
                if not (include / "onnxruntime_cxx_api.h").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
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
        with contextlib.suppress(FileExistsError):  # another build made it
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


def ort_version_ok() -> str:
    """Empty when the installed onnxruntime serves the headers' API version; else why not."""
    v = package_version("onnxruntime")
    try:
        parts = tuple(int(x) for x in v.split(".")[:2])
    except ValueError:
        return f"cannot read onnxruntime's version ({v})"
    if parts < MIN_ORT:
        return f"onnxruntime {v} is older than the headers' API ({MIN_ORT[0]}.{MIN_ORT[1]}; pip install 'onnxruntime>=1.29')"
    return ""


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
