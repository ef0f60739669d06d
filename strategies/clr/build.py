"""Mono, pythonnet and the C# side: finding them, compiling Runner.cs with mcs once (cached by a hash
of the source, pythonnet's Python.Runtime.dll and Mono's version), and loading it into the process."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

from bench.cache import default_cache_dir

SOURCE = Path(__file__).with_name("Runner.cs")
ASSEMBLY = "InteropBench"
INSTALL = "apt-get install -y mono-devel (`nox -s bench` and `nox -s tests` do it when run as root on Debian/Ubuntu)"


def python_runtime_dll() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pythonnet")
    if spec is None or spec.origin is None:
        raise RuntimeError("Python package 'pythonnet' is not installed (pip install pythonnet)")
    return Path(spec.origin).parent / "runtime" / "Python.Runtime.dll"


def facades_dir() -> Path | None:
    """Mono's netstandard facades (Python.Runtime.dll targets netstandard2.0)."""
    mono = shutil.which("mono")
    candidates = [Path(mono).resolve().parent.parent / "lib" / "mono" / "4.5" / "Facades"] if mono else []
    candidates.append(Path("/usr/lib/mono/4.5/Facades"))
    return next((d for d in candidates if (d / "netstandard.dll").exists()), None)


def missing() -> str:
    """Why the CLR can't run here ('' when it can), with the command that fixes it."""
    for tool in ("mono", "mcs"):
        if shutil.which(tool) is None:
            return f"Mono is not installed: no '{tool}' on PATH ({INSTALL})"
    if facades_dir() is None:
        return f"Mono's netstandard facades are missing ({INSTALL})"
    try:
        if not python_runtime_dll().exists():
            return "pythonnet is installed without its Python.Runtime.dll (pip install --force-reinstall pythonnet)"
    except RuntimeError as e:
        return str(e)
    return ""


@functools.cache
def mono_version() -> str:
    try:
        out = subprocess.run(["mono", "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].removeprefix("Mono JIT compiler version ").split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def assembly_path() -> Path:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(python_runtime_dll().read_bytes())
    h.update(mono_version().encode())
    return default_cache_dir() / "clr-build" / h.hexdigest()[:16] / f"{ASSEMBLY}.dll"


def build() -> Path:
    """Compile Runner.cs with mcs unless this exact build is cached (about a second)."""
    out = assembly_path()
    if out.exists():
        return out
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = ["mcs", "-target:library", "-unsafe", "-optimize+", "-nologo", f"-out:{tmp}",
           f"-r:{python_runtime_dll()}", f"-r:{facades_dir() / 'netstandard.dll'}", "-r:System.Numerics", str(SOURCE)]
    print(" ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(p.stdout + p.stderr, flush=True)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"mcs failed to compile {SOURCE.name}:\n{p.stdout}{p.stderr}")
    os.replace(tmp, out)  # atomic: a concurrent build never sees half a file
    return out


def load() -> ModuleType:
    """Start Mono's CLR in this process (once), load the compiled assembly, return its namespace."""
    if ASSEMBLY in sys.modules:
        return sys.modules[ASSEMBLY]
    dll = build()
    import pythonnet

    # Mono's default (hybrid) thread suspend deadlocks here: a thread waiting for the GIL inside a
    # call from C# into Python never reaches a GC safepoint, while the GIL's holder waits for the GC
    # to stop the world. Signal-based suspend doesn't need the thread's help; pythonnet's own CI runs
    # Mono this way. Read once, when the runtime starts.
    os.environ.setdefault("MONO_THREADS_SUSPEND", "preemptive")
    # A crash of the runtime prints its report (native and managed stacks) to stderr, which the cell's
    # log keeps; without this, Mono also drops a mono_crash.*.json into whatever the working directory is.
    os.environ.setdefault("MONO_CRASH_NOFILE", "1")
    with warnings.catch_warnings():
        # clr_loader warns that Mono before 6.12 "is known to be problematic"; Debian ships 6.8, and a
        # crash of the runtime fails only the cell whose process it is
        warnings.simplefilter("ignore", UserWarning)
        if pythonnet.get_runtime_info() is None:
            pythonnet.load("mono")
    import clr

    clr.AddReference(str(dll))
    import InteropBench

    return InteropBench
