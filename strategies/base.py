"""The contract every strategy implements.

A strategy is one way of running a PyTorch model from an application. The harness drives it as:

    strategy.available()                      -> Availability (why it can't run here, if it can't)
    strategy.prepare(model, out_dir)          -> writes artifacts (ONNX file, compiled library, ...)
                                                 into out_dir; called only on a cache miss, in its own
                                                 process; the cache key hashes the model's weights,
                                                 this strategy's source folder and runtime versions
    session = strategy.open(model, artifacts, options)   in the cell's own fresh process
    session.run({name: ndarray}) -> {name: ndarray}       inference on named NumPy arrays
    session.time_calls(inputs, n)             -> CallTimings, n timed calls (override to time inside
                                                 a foreign runtime; the default times run())
    session.run_load(inputs, callers, s, warmup_s, arrivals=None) -> LoadTimings or None: N callers (back to back, or on an arrival schedule) in
                                                 the foreign runtime's own threads (None: the harness
                                                 runs them as Python threads calling run())
    session.close()

Everything heavy (torch, onnxruntime, a CLR, a server) must be imported inside ``prepare``/``open``,
never at module import: the harness process lists strategies without loading any runtime.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fixtures.specs import ModelSpec, make_inputs

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # when not ok: what is missing and the command that fixes it

    @classmethod
    def missing_module(cls, module: str, install: str) -> Availability:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return cls(False, f"Python package '{module}' is not installed ({install})")
        return cls(True)


@dataclass(frozen=True)
class SessionOptions:
    threads: int  # intra-op threads for every runtime in the cell
    concurrency: int = 1  # callers that will call run() at once
    settings: Mapping[str, Any] = field(default_factory=dict)  # strategy-specific, from the config


@dataclass(frozen=True)
class CliFlag:
    """A command-line flag a strategy adds to ``bench run``; its value lands in ``settings[key]`` of
    every strategy that declares the same flag."""

    flag: str
    key: str
    help: str
    metavar: str = "VALUE"


@dataclass
class ModelHandle:
    """What prepare() and open() get: the spec, and the torch module built on demand."""

    spec: ModelSpec
    seed: int
    content_hash: str = ""
    _module: Any = None
    build_s: float = 0.0  # time the user's factory took in this process (the cold start's "model build")

    def build(self) -> Any:
        if self._module is None:
            from fixtures.loading import build_model

            t0 = time.perf_counter()
            self._module = build_model(self.spec, self.seed)
            self.build_s = time.perf_counter() - t0
        return self._module

    def dynamic_shapes(self, max_batch: int | None = None, named: bool = True) -> tuple[dict[int, Any], ...]:
        """``dynamic_shapes`` for torch.export over the spec's inputs: each input's batch axis dynamic,
        from 1 up to ``max_batch`` (unbounded when None), each named dimension (``seq``) dynamic within
        its range (one Dim per name, shared by the inputs that carry it), every other axis static."""
        import torch

        dims = {"batch": torch.export.Dim("batch", min=1, max=max_batch)}
        if named:  # else the named dimensions stay static at the example inputs' (nominal) size
            dims.update({k: torch.export.Dim(k, min=lo, max=hi) for k, (lo, hi, _) in self.spec.dims.items()})
        return tuple({i: dims[d] for i, d in enumerate(t.shape) if d in dims} for t in self.spec.inputs)

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        return make_inputs(self.spec, batch, self.seed)


class ShapeUnsupported(ValueError):
    """A call whose shape the route was built not to take (an artifact lowered with a named dimension
    fixed, because its toolchain could not keep it dynamic). The message says what it cannot do; the
    shapes scenario records the route as unsupported for the model's range, not as wrong."""


@dataclass
class CallTimings:
    """n calls' latencies in ns and, where the session reports one, a per-call breakdown in ns."""

    latency_ns: np.ndarray
    phases_ns: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Arrivals:
    """An open-loop schedule (bench.arrivals): request i arrives ``offsets_s[i]`` after the start,
    whatever the callers are doing; the first ``warmup_n`` are a warm-up. With ``budget_ns`` above 0,
    the load may stop once more than ``max_over`` measured requests took longer than that from their
    scheduled arrival (an early stop of a search over rates)."""

    offsets_s: np.ndarray
    warmup_n: int
    budget_ns: int = 0
    max_over: int = 0
    deadline_ns: int = 0  # no request is sent after this (ns from the start; 0: none): an overloaded route ends

    def offsets_ns(self) -> np.ndarray:
        return np.round(np.asarray(self.offsets_s, dtype=np.float64) * 1e9).astype(np.int64)


@dataclass
class LoadTimings:
    """A load run by the session's own runtime. Closed loop: the latency in ns of every call that
    completed inside the measured window and the window's length. Open loop (arrivals given): per
    request of the schedule, when it was sent and when it was done, in ns from the schedule's start
    (-1: never). Either way the first caller's error, if any."""

    latency_ns: np.ndarray
    wall_s: float
    error: str = ""
    send_ns: np.ndarray | None = None
    done_ns: np.ndarray | None = None
    driver: str = ""  # who ran the callers, e.g. "C# threads (CoreCLR)"
    stopped_early: bool = False


class Session(ABC):
    """An open runtime, ready to run the model. Opened once per cell, closed at its end."""

    #: names of the breakdown phases this session reports for each call, in order
    phases: ClassVar[tuple[str, ...]] = ()
    #: run_load serves open-loop arrivals in the session's own runtime (else Python threads do)
    runs_arrivals: ClassVar[bool] = False

    @abstractmethod
    def run(self, inputs: Arrays) -> dict[str, np.ndarray]:
        """One inference: named NumPy inputs in, named NumPy outputs out."""

    def last_phases_ns(self) -> Mapping[str, int]:
        """Breakdown of the last run() call, in ns, keyed by ``phases``. Sessions with phases override."""
        return {}

    def time_calls(self, inputs: Arrays, n: int) -> CallTimings:
        """Time n calls. Override when the caller lives in another runtime and must time itself."""
        clock = time.perf_counter_ns
        run = self.run
        lat = np.empty(n, dtype=np.int64)
        if not self.phases:
            for i in range(n):
                t0 = clock()
                run(inputs)
                lat[i] = clock() - t0
            return CallTimings(lat)
        phases = {p: np.zeros(n, dtype=np.int64) for p in self.phases}
        for i in range(n):
            t0 = clock()
            run(inputs)
            lat[i] = clock() - t0
            for p, v in self.last_phases_ns().items():
                phases[p][i] = v
        return CallTimings(lat, phases)

    def run_load(self, inputs: Arrays, callers: int, duration_s: float, warmup_s: float,
                 arrivals: Arrivals | None = None) -> LoadTimings | None:
        """Override when the application's callers live in another runtime (C++, C#): run ``callers``
        threads of that runtime. Without ``arrivals`` (closed loop) they call back to back: warm up for
        warmup_s, then time every call completed within duration_s. With ``arrivals`` (open loop) each
        caller takes the next request in schedule order, waits for its time, calls, and records when it
        sent it and when it was done. The harness calls this from a Python thread and samples memory
        meanwhile, so release the GIL while the load runs. Returning None (the default, or for a kind
        of load the session cannot run) lets the harness run the callers as Python threads calling run()."""
        return None

    def pids(self) -> list[tuple[int, str]]:
        """Other processes this session uses (a server, ...), as (pid, role), so memory counts them."""
        return []

    def memory_extra(self) -> dict[str, int]:
        """Runtime-specific memory figures in bytes (a managed heap, an arena), beside process RSS."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Facts about this session the report should show (target address, encoding, ...)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime; stop anything started."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



@dataclass(frozen=True)
class RouteFacts:
    """What a route is, recorded with each run (run.json ``strategies``) for the decision, the scorecard and
    `bench list`: the languages that can call it ("any" for a network service), whether Python must be where
    the application runs, what it ships, its exporter, whether it takes several callers at once."""

    languages: tuple[str, ...] = ("python",)
    python_at_deployment: bool | None = None
    artifact: str = ""
    exporter: str = ""
    concurrent_calls: bool = True
    summary: str = ""
    other: Mapping[str, Any] = field(default_factory=dict)  # keys a newer release records

    def callable_from(self, caller: str) -> bool:
        """Whether an application in ``caller``'s language can use this route (a network service serves every one)."""
        return caller in self.languages or "any" in self.languages

    @property
    def needs_python(self) -> bool:
        """Python where the application runs (a route that does not say is taken to need it)."""
        return self.python_at_deployment is not False

    def to_json(self) -> dict[str, Any]:
        return {"languages": list(self.languages), "python_at_deployment": self.python_at_deployment,
                "artifact": self.artifact, "exporter": self.exporter, "concurrent_calls": self.concurrent_calls,
                "summary": self.summary, **self.other}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> RouteFacts:
        d = d or {}
        known = {"languages", "python_at_deployment", "artifact", "exporter", "concurrent_calls", "summary"}
        return cls(tuple(d.get("languages") or ("python",)), d.get("python_at_deployment"), str(d.get("artifact") or ""),
                   str(d.get("exporter") or ""), bool(d.get("concurrent_calls", True)), str(d.get("summary") or ""),
                   {k: v for k, v in d.items() if k not in known})


class RouteTable(dict):
    """Route facts by strategy name (without its ``@variant``); ``of`` looks up any name a cell carries."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> RouteTable:
        return cls({str(k): RouteFacts.from_json(v) for k, v in (d or {}).items()})

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.items()}

    def of(self, strategy: str) -> RouteFacts:
        """The facts of ``strategy`` or ``strategy@variant``; a route nobody recorded is a Python route."""
        return self.get(base_name(strategy)) or self.get(strategy) or RouteFacts()


def base_name(strategy: str) -> str:
    """``clr-embed@mono`` -> ``clr-embed``: the strategy a variant's name runs."""
    return strategy.partition("@")[0]

class Strategy(ABC):
    """One integration strategy. Subclass, set ``name``/``summary``, implement ``open``; register it
    with ``@strategies.register`` in a subpackage of ``strategies/``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    #: whether several threads may call Session.run at once (enables the concurrency sweep)
    concurrent_calls: ClassVar[bool] = True
    #: whether prepare() produces artifacts (otherwise it is never called)
    needs_artifacts: ClassVar[bool] = False
    #: what a first prepare() does and how long it takes, shown while it runs
    prepare_hint: ClassVar[str] = ""
    #: extra `bench run` flags this strategy takes (values arrive in SessionOptions.settings)
    cli_flags: ClassVar[tuple[CliFlag, ...]] = ()
    # -- what the route is, for a decision by caller language and deployment constraints --
    #: the application languages that can call this route: "python", "csharp", "cpp", or "any" (a network service)
    languages: ClassVar[tuple[str, ...]] = ("python",)
    #: must Python be installed where the application (or its service) is deployed?
    python_at_deployment: ClassVar[bool] = True
    #: what is shipped beside the application: "none" (the model's Python code), "ONNX file", ...
    artifact: ClassVar[str] = "none"
    #: the exporter the model must get through ("" if none): the coverage risk of the route
    exporter: ClassVar[str] = ""
    #: NAME@VARIANT runs this strategy with ``settings[variant_key] = VARIANT``, so one run can put the
    #: variants side by side as strategies of their own (e.g. clr-embed@mono beside clr-embed@coreclr)
    variants: ClassVar[tuple[str, ...]] = ()
    variant_key: ClassVar[str] = ""
    #: the [strategy.NAME] keys this strategy takes besides its cli_flags' keys; a config naming any other
    #: is refused (nearest key suggested). None: not declared, not checked.
    settings_keys: ClassVar[tuple[str, ...] | None] = None
    #: modules the session's runtime needs: a cell imports them before open(), timed as the cold
    #: start's "runtime import" phase (open() then times loading the model, not importing libraries)
    runtime_modules: ClassVar[tuple[str, ...]] = ()

    def available(self) -> Availability:
        return Availability(True)

    def runtime_versions(self) -> dict[str, str]:
        """Versions of the runtimes this strategy uses; recorded with every result and in cache keys."""
        return {}

    def facts(self) -> RouteFacts:
        """What the route is (recorded with each run, for the decision and `bench list`)."""
        return RouteFacts(tuple(self.languages), self.python_at_deployment, self.artifact, self.exporter,
                          self.concurrent_calls, self.summary)

    def default_variant(self) -> str:
        """The variant a plain NAME runs (for `bench list`), if the strategy has variants."""
        return ""

    def variant_reason(self, variant: str) -> str:
        """Why NAME@variant cannot run here ('' when it can, or when the strategy does not say)."""
        return ""

    def check_settings(self, settings: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise ValueError (one line) for a setting this strategy cannot take, before any cell runs."""

    def load_runtime(self) -> None:
        """Load the runtime before open() (timed as the cold start's "runtime import"): by default,
        import ``runtime_modules``; a strategy whose runtime is a native library loads it here."""
        import importlib

        for module in self.runtime_modules:
            importlib.import_module(module)

    def prepare(self, model: ModelHandle, out_dir: Path) -> None:  # noqa: B027 - optional hook
        """Turn the model into this strategy's artifacts inside out_dir. Raise to fail the cells."""

    @abstractmethod
    def open(self, model: ModelHandle, artifacts: Path | None, options: SessionOptions) -> Session:
        """Load the runtime and the artifacts; return a session ready for run()."""

    def source_hash(self) -> str:
        """Hash of every file this strategy's code depends on: its own folder (a .py, .cpp or .cs edited
        rebuilds its artifacts) and every other part of ``strategies/`` its modules import, transitively
        (``strategies/shared``, a sibling route's folder)."""
        folder = Path(inspect.getfile(type(self))).parent
        h = hashlib.sha256()
        for f in sorted(folder.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(f.relative_to(folder).as_posix().encode())
                h.update(f.read_bytes())
        for f in sorted(source_dependencies(folder) - set(folder.rglob("*"))):
            h.update(f.relative_to(STRATEGIES_DIR).as_posix().encode())
            h.update(f.read_bytes())
        return h.hexdigest()


STRATEGIES_DIR = Path(__file__).resolve().parent
_INTERFACE = frozenset({"strategies", "strategies.base", "strategies.shared"})  # the contract every route imports, not what it builds


def source_dependencies(folder: Path) -> set[Path]:
    """The files of ``strategies/`` that the Python in ``folder`` imports, directly or through each other:
    a route's folder counts whole (its C++ or C# beside its Python), a module of a plain package by itself."""
    import ast

    seen: set[Path] = set()
    todo = [f for f in folder.rglob("*.py") if "__pycache__" not in f.parts]
    done: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        try:
            tree = ast.parse(f.read_text(), str(f))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if not name.startswith("strategies.") or name in _INTERFACE:
                    continue
                parts = name.split(".")[1:]
                route = STRATEGIES_DIR / parts[0]
                if parts[0] != "shared" and (route / "__init__.py").exists():  # a route: its whole folder
                    new = {p for p in route.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
                else:  # strategies.shared or a module of it: the module alone
                    module = STRATEGIES_DIR.joinpath(*parts)
                    new = {q for q in (module.with_suffix(".py"), module / "__init__.py") if q.is_file()}
                for q in new - seen:
                    seen.add(q)
                    if q.suffix == ".py":
                        todo.append(q)
    return seen


def exporter_cause(e: BaseException) -> str:
    """One line from an exporter's exception: torch.export's and torch.onnx's messages run to pages
    with ANSI colours, so keep the exception summary and the model line that raised it, as
    "Cause: detail at file.py:41 `if x.sum() > 0:`". The full text stays in the traceback."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = lines[0] if lines else type(e).__name__
    m = re.search(r"## Exception summary\s*\n\s*(.+)", text)
    if m:
        cause = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", m.group(1).strip())
    where = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+).*\n\s*(.+)', text)
    loc = f" at {Path(where.group(1)).name}:{where.group(2)} `{where.group(3).strip()}`" if where else ""
    return " ".join(f"{cause[:300]}{loc}".split())


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
