"""Two commands do all the set-up on a fresh machine: `nox -s bench` and `nox -s tests`.

Python packages come from pyproject.toml (torch pinned to the CPU build). Later strategies that need
OS packages (Mono for the CLR strategy) install them here too, where missing and running as root.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
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
