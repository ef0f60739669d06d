"""Python stubs generated from interop_inference.proto by grpcio-tools, on first use, into the
artifact cache (keyed by the .proto's hash and the grpcio-tools version), so they are always
current and never checked in."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from plumbing.cache import default_cache_dir
from strategies.base import package_version

PROTO = Path(__file__).with_name("interop_inference.proto")


def stub_dir() -> Path:
    key = hashlib.sha256(PROTO.read_bytes() + package_version("grpcio-tools").encode()).hexdigest()[:16]
    return default_cache_dir() / "grpc-stubs" / key


def generate(out: Path) -> None:
    from grpc_tools import protoc

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = ["grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO.name]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process generated them first
        shutil.rmtree(tmp, ignore_errors=True)


@cache
def load() -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules."""
    out = stub_dir()
    if not (out / "interop_inference_pb2_grpc.py").exists():
        generate(out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    import interop_inference_pb2  # type: ignore[import-not-found]
    import interop_inference_pb2_grpc  # type: ignore[import-not-found]

    return interop_inference_pb2, interop_inference_pb2_grpc
