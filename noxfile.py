"""Two commands do all the set-up on a fresh machine: `nox -s bench` and `nox -s tests`.

Python packages come from pyproject.toml (torch pinned to the CPU build). OS packages (Mono for the
CLR strategies) are installed here too, where missing and running as root with apt-get.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"


def _ensure_mono(session: nox.Session) -> None:
    """The CLR strategy needs Mono (the `mono` runtime, the `mcs` compiler and the netstandard
    facades, all in Debian's mono-devel). Installed here where missing and we may: root on a system
    with apt-get. Elsewhere `bench list` shows the strategy unavailable with the command to run."""
    if shutil.which("mono") and shutil.which("mcs") and os.path.exists("/usr/lib/mono/4.5/Facades/netstandard.dll"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.warn("Mono is missing and this session can't install it (needs root and apt-get): the clr-* "
                     "strategies will be unavailable; run `apt-get install -y mono-devel` to add them")
        return
    session.log("installing Mono for the clr-* strategies (apt-get install mono-devel, a few minutes, once)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "mono-devel", external=True, env=env)


def _install(session: nox.Session) -> None:
    _ensure_mono(session)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, then the test suite against the real runtimes."""
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
    session.run("python", "-m", "tests.benchmarks.libtorch_overhead")
    session.run("python", "-m", "tests.benchmarks.clr_overhead")
