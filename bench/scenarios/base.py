"""The scenario contract: what one kind of measurement is, from its config to its report section.

A scenario says which cells it adds to the matrix (``cells``), what runs in the worker once the
strategy's session is open and warm (``measure``), which flat figures it puts in ``summary.csv``
(``columns``), how ``compare`` judges it (``metrics``) and what the report shows of it (``report``).
The runner, the results store, ``compare`` and the report reach scenarios only through this class
and the registry (``bench.scenarios``); a scenario never imports the report (imports run one way),
so its section is plain data (``bench.sections.Section``) that the report renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bench.sections import Section
from plumbing.errors import UserError

if TYPE_CHECKING:
    from bench.config import RunConfig
    from bench.cpu import CpuMeter
    from bench.measure import SamplingConfig
    from bench.record import Cell, CellResult
    from strategies.base import Arrays, Session


@dataclass(frozen=True)
class Option:
    """One config key of a scenario (``[open_loop] rates = [...]``): its default, a checker that
    returns the clean value or raises UserError, its help, and the `bench run` flag that sets it."""

    default: Any
    check: Callable[[str, Any], Any]
    help: str
    flag: str = ""


@dataclass(frozen=True)
class Metric:
    """A figure ``compare`` judges for this scenario's cells, beside the latency samples every cell has.
    ``key`` is a column of summary.csv; ``better`` is "lower" or "higher"; a change counts only past
    ``threshold`` (the scenario's noise on a shared machine, measured)."""

    key: str
    label: str
    better: str
    threshold: float
    #: it has no samples of its own but moves with latency (closed-loop throughput = callers / latency):
    #: its verdict also needs the latency test's significance, and its threshold is compare's concurrent one
    follows_latency: bool = False


@dataclass
class Context:
    """What ``measure`` gets: the open, warmed-up session and everything about the cell."""

    session: Session
    inputs: Arrays
    cell: Cell
    sampling: SamplingConfig
    options: dict[str, Any]  # this scenario's configured options
    per_call_s: float  # one call's typical time, from the warm-up
    between_rounds: Callable[[], None]  # samples memory; call it outside timed regions
    cpu: CpuMeter  # CPU time of every process the cell uses
    concurrent_calls: bool  # whether the strategy allows several callers at once
    job: dict[str, Any] = field(default_factory=dict)  # the cell's job (e.g. the load generator's ceiling)


@dataclass
class Measured:
    """What ``measure`` returns. ``latency_ns`` are the cell's latency samples (``compare`` tests
    them); ``calls`` and ``wall_s`` give its throughput; ``figures`` are flat numbers for summary.csv
    (see ``Scenario.figure_columns``); ``detail`` is any JSON the scenario's report part reads back."""

    latency_ns: np.ndarray
    calls: int
    wall_s: float
    sampling: dict[str, Any]
    calls_per_s: float | None = None  # default calls / wall_s
    phases_ns: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, float | None] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    cpu_s: float | None = None  # CPU seconds over the calls counted (default: the meter over measure())
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    #: measured parts of the cell (a length bucket): each {"point", "latency_ns", "figures"}, kept inside the
    #: cell's record (bench.record.Part); as rows (summary.csv, compare, history) each has the cell's identity
    #: with ``.point`` appended, so they are followed apart
    parts: list[dict[str, Any]] = field(default_factory=list)
    #: wrong outputs the scenario found itself (every request checked): the cell is invalid, never ranked
    problems: list[str] = field(default_factory=list)
    #: what the route declared it cannot take (strategies.base.ShapeUnsupported): the cell is unsupported, not wrong
    unsupported: str = ""


class Scenario:
    """Subclass, set the class attributes, implement ``cells`` and ``measure``; register it with
    ``@bench.scenarios.register`` in a module of ``bench/scenarios/`` or a plugin module."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    #: the config table of this scenario's options (``[open_loop]``); "" when it has none
    table: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    #: cells of this scenario keep the ids they had before scenarios existed (no suffix)
    legacy_ids: ClassVar[bool] = False
    #: its rows feed the report's standing sections (ranking, latency, throughput, payload, memory);
    #: any other scenario's show only in its own ``report`` part (and in correctness and errors)
    fixed_sections: ClassVar[bool] = False
    #: extra summary.csv columns this scenario fills (keys of Measured.figures)
    figure_columns: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    #: the threshold compare applies to this scenario's latency samples (None: compare's own)
    latency_threshold: ClassVar[float | None] = None
    #: compare tests its cells' latency samples (False where they come from a rate that differs from run
    #: to run, as the slo search's answer does: its own metrics judge it instead)
    compares_latency: ClassVar[bool] = True
    #: its one-caller cells are measured in interleaved rounds of warm workers (bench.rounds), every route of a
    #: model, thread count and allocator side by side, instead of each cell alone through ``measure``
    interleaved: ClassVar[bool] = False
    #: its cells need the open-loop load generator's own ceiling (measured once per run, in job["load_generator"])
    needs_load_generator: ClassVar[bool] = False

    def configure(self, raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
        """Validated options: defaults <- the config table <- flags. UserError on anything wrong."""
        from bench.config import unknown_keys

        where = f"[{self.table}]" if self.table else f"scenario {self.name}"
        if not isinstance(raw, dict):
            raise UserError(f"{where} must be a table")
        unknown_keys(where, raw, self.options)
        out = {}
        for key, opt in self.options.items():
            value = flags.get(key) if flags.get(key) is not None else raw.get(key, opt.default)
            label = f"{self.table}.{key}" + (f" ({opt.flag})" if opt.flag else "")
            out[key] = opt.check(label, value)
        return out

    def cells(self, cfg: RunConfig, options: dict[str, Any]) -> list[Cell]:
        raise NotImplementedError

    def reference_plan(self, cell: Cell, options: dict[str, Any]) -> dict[str, Any] | None:
        """Requests beyond the cell's one input set whose eager-torch references the probe must compute
        (fixtures.requests plan), or None."""
        return None

    def point_label(self, point: str) -> str:
        """How a cell's point (a rate, ...) reads in the report."""
        return point

    def timeout_s(self, sampling: SamplingConfig, options: dict[str, Any]) -> float:
        """The longest its measure() may take, beyond start-up (the worker is killed past it)."""
        return sampling.warmup_s * 4 + sampling.max_time_s * 2 + sampling.concurrency_s * 2

    def measure(self, ctx: Context) -> Measured:
        raise NotImplementedError

    def warnings(self, result: CellResult) -> list[str]:
        """One-line warnings about a finished cell, for the terminal and the report."""
        return list(result.detail.get("warnings", []))

    def describe(self, result: CellResult) -> str:
        """The progress line's text for a finished cell (default: p50 and p99)."""
        return ""

    def report(self, rows: list[dict[str, Any]], results: list[CellResult], options: dict[str, Any]) -> Section | None:
        """This scenario's section of the report from its summary.csv rows (plain dicts, one per cell and one
        per part of a cell) and its cell records (``bench.record.CellResult``, each cell's parts inside it;
        ``bench.record.with_parts`` gives them as rows of their own). None: no section."""
        return None


# -- option checkers, shared by scenarios ------------------------------------------------------------

def _from_flag(v: Any, kind: type) -> Any:
    """A command-line value arrives as text: '40' -> 40, '2.5' -> 2.5 (anything else stays as given)."""
    if isinstance(v, str):
        try:
            return kind(v.strip()[:40])
        except ValueError:
            return v
    return v


def positive_number(label: str, v: Any, cap: float = 1e9) -> float:
    import math

    v = _from_flag(v, float)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"{label} must be a positive number, got {v!r}")
    if v > cap:
        raise UserError(f"{label} must be <= {cap:g}, got {v!r}")
    return float(v)


def positive_int(label: str, v: Any, cap: int = 10_000_000) -> int:
    v = _from_flag(v, int)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"{label} must be a positive integer, got {v!r}")
    if v > cap:
        raise UserError(f"{label} must be <= {cap}, got {v!r}")
    return v


def choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(label: str, v: Any) -> str:
        if v not in allowed:
            raise UserError(f"{label} must be one of {', '.join(allowed)}, got {v!r}")
        return v
    return check
