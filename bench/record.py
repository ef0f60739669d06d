"""The cell record: one typed, versioned result per cell of the matrix, and the types inside it
(about 400 lines: the record, its nine sub-records and the reading of every older file shape belong
together, so that one module is the whole file format).

A worker measures a cell and builds a ``CellResult``; it crosses the process boundary as JSON
(``to_json``) and is turned back into a record at once (``from_json``). Everything after that (the
results folder, the history store, compare, merge, the gate, the rematch, exports, the scenarios' report
hooks, the report) reads attributes, never keys. ``from_json`` reads every cell file written since the
first release (records without a version, without a scenario, with parts beside their cell in a history
store) and keeps any key it does not know in ``other``, so a newer file read by an older release loses
nothing when written back.

Layout of the file (version 2; version 1 is the same without ``record_version``)::

    cell              identity (bench.record.Cell)
    status, error     ok | invalid (ran, outputs wrong) | error | skipped | unsupported; one line why
    latency           a stats.Summary of the scenario's latency samples (seconds); samples_ns: raw (ns)
    throughput        calls and samples per second
    open_s, first_call_s, cold_start_s, cold_start_phases
    phases            per-phase summaries (a route that times its own steps)
    prepare, memory, cpu, sampling, correctness
    figures           the scenario's flat figures (summary.csv columns); scenario_detail: its own JSON
    parts             measured parts of the cell (a length bucket), each with its own latency
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from bench.stats import Summary

RECORD_VERSION = 2


class Status(enum.StrEnum):
    OK = "ok"
    INVALID = "invalid"  # ran, but its outputs are wrong: never ranked
    ERROR = "error"
    SKIPPED = "skipped"  # not run: the route is unavailable or cannot take the cell
    UNSUPPORTED = "unsupported"  # correct where it ran, but the route declared shapes it cannot take

    @property
    def ran(self) -> bool:
        """It was measured (its outputs checked, right or wrong)."""
        return self in (Status.OK, Status.INVALID)

    @classmethod
    def parse(cls, value: Any) -> Status:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown cell status {value!r}") from None


@dataclass(frozen=True, order=True)
class Cell:
    """One point of the matrix: the one key type every module uses (ids in files, resumes,
    comparisons and history are ``Cell.id``)."""

    model: str
    strategy: str
    batch: int
    threads: int
    concurrency: int  # callers (closed loop), or the callers serving arrivals (open loop)
    malloc: str = ""  # the allocator policy, where a run compares several; "" when the run has one
    scenario: str = "latency"  # bench.scenarios: what is measured
    point: str = ""  # the scenario's point, if it has several per cell (an arrival rate: "200rps")

    @property
    def id(self) -> str:
        base = f"{self.model}/{self.strategy}/b{self.batch}/t{self.threads}/c{self.concurrency}"
        from bench import scenarios

        if self.scenario not in scenarios.LEGACY:  # the measurements older runs made keep their ids
            base += f"/{self.scenario}" + (f"@{self.point}" if self.point else "")
        return f"{base}/{self.malloc}" if self.malloc else base

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.id.replace("/", "__"))

    def with_point(self, sub: str) -> Cell:
        """This cell's part ``sub`` (a length bucket): the point gains ``.sub``."""
        return replace(self, point=f"{self.point}.{sub}".lstrip("."))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        from bench import scenarios

        return cls(d["model"], d["strategy"], int(d["batch"]), int(d["threads"]), int(d["concurrency"]),
                   d.get("malloc", "") or "", scenarios.infer(d), str(d.get("point", "") or ""))


# -- a small typed-JSON base: known fields by name, unknown keys kept ------------------------------------

def _conv(load: Callable[[Any], Any] | None = None, dump: Callable[[Any], Any] | None = None,
          key: str = "") -> dict[str, Any]:
    return {"load": load, "dump": dump, "key": key}


class Record:
    """Dataclass records read from and written to JSON: a field's key is its name (or ``metadata["key"]``).
    Keys the record does not know are kept in ``other``. A record read from a file writes back what the file
    held: the keys it had (an explicit null, an empty object) and, inside a plain object such as a latency
    summary or a cell's identity, keys this release does not know. A record made in code writes None and
    empty values only for the fields in ``_always`` (what every cell file has carried)."""

    other: dict[str, Any]
    _always: ClassVar[frozenset[str]] = frozenset()
    _fields_cache: ClassVar[dict[type, list[tuple[str, str, Any, Any]]]] = {}

    @classmethod
    def _specs(cls) -> list[tuple[str, str, Any, Any]]:
        specs = Record._fields_cache.get(cls)
        if specs is None:
            specs = [(f.name, f.metadata.get("key") or f.name, f.metadata.get("load"), f.metadata.get("dump"))
                     for f in fields(cls) if f.name != "other"]  # type: ignore[arg-type]
            Record._fields_cache[cls] = specs
        return specs

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__} is a JSON object, not {type(d).__name__}")
        kwargs: dict[str, Any] = {}
        known = set()
        for name, key, load, _ in cls._specs():
            known.add(key)
            v = d.get(key)
            if v is not None:
                kwargs[name] = load(v) if load else v
        obj = cls(**kwargs, other={k: v for k, v in d.items() if k not in known})
        object.__setattr__(obj, "_read_from", d)  # not a field: dataclasses.replace() makes a record of its own
        return obj

    def to_json(self) -> dict[str, Any]:
        read: dict[str, Any] = getattr(self, "_read_from", None) or {}
        out: dict[str, Any] = {}
        for name, key, _, dump in self._specs():
            v = getattr(self, name)
            empty = v is None or (isinstance(v, (dict, list, tuple, str)) and not v)
            if empty and name not in self._always and key not in read:
                continue
            was = read.get(key)
            value = (was if not was else None) if v is None else dump(v) if dump else v  # null or {} as read
            if isinstance(value, dict) and isinstance(was, dict) and not isinstance(v, (Record, dict)):
                value = {**{k: x for k, x in was.items() if k not in value}, **value}  # a newer Summary's keys
            out[key] = value
        out.update(self.other)
        return out


def _summary(d: dict[str, Any]) -> Summary:
    """A stats.Summary from its JSON; older files lack the percentile intervals."""
    names = {f.name: f for f in fields(Summary)}
    kw = {k: d.get(k) for k in names if k in d or names[k].default is MISSING}
    for k in ("p90_ci", "p99_ci"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return Summary(**kw)


def _summaries(d: dict[str, Any]) -> dict[str, Summary]:
    return {k: _summary(v) for k, v in d.items()}


def _dump_summary(s: Summary) -> dict[str, Any]:
    d = s.to_json()
    for k in ("p90_ci", "p99_ci"):
        if d.get(k) is not None:
            d[k] = list(d[k])
    return d


def _dump_summaries(d: dict[str, Summary]) -> dict[str, Any]:
    return {k: _dump_summary(v) for k, v in d.items()}


def _sub(cls: type) -> Callable[[Any], Any]:
    """A sub-record's loader: an empty object (``"prepare": {}``, as some releases wrote) reads as absent."""
    return lambda d: cls.from_json(d) if d else None


def _many(cls: type) -> Callable[[Any], list]:
    return lambda items: [cls.from_json(x) for x in items if isinstance(x, dict)]


def _dump_many(items: list) -> list[dict[str, Any]]:
    return [x.to_json() for x in items]


# -- the parts of a cell record ----------------------------------------------------------------------

@dataclass(frozen=True)
class Throughput(Record):
    calls_per_s: float | None = None
    samples_per_s: float | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, calls_per_s: float, batch: int) -> Throughput:
        return cls(calls_per_s, calls_per_s * batch)


@dataclass(frozen=True)
class ProcessMemory(Record):
    pid: int | None = None
    role: str = ""
    baseline: int | None = None
    steady: int | None = None
    peak: int | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Memory(Record):
    """RSS of every process the cell used, from /proc (bench.memory), in bytes."""

    baseline_rss: int | None = None  # the worker before the strategy opened
    steady_rss: int | None = None
    peak_rss: int | None = None  # sum of per-process peaks
    added_steady: int | None = None
    added_peak: int | None = None
    processes: list[ProcessMemory] = field(default_factory=list, metadata=_conv(_many(ProcessMemory), _dump_many))
    extra: dict[str, int] = field(default_factory=dict)  # what the session reports beside RSS (a CLR's heap)
    other: dict[str, Any] = field(default_factory=dict)

    _always = frozenset({"processes", "extra"})


@dataclass(frozen=True)
class Cpu(Record):
    seconds: float | None = None
    calls: int | None = None
    by_role: dict[str, float] = field(default_factory=dict)
    s_per_inference: float | None = None
    other: dict[str, Any] = field(default_factory=dict)

    _always = frozenset({"by_role", "s_per_inference"})


@dataclass(frozen=True)
class OutputCheck(Record):
    """One output against eager torch's (bench.correctness)."""

    ok: bool | None = None
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    worst: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)

    _always = frozenset({"shape"})


def _outputs(d: dict[str, Any]) -> dict[str, OutputCheck]:
    return {k: OutputCheck.from_json(v) for k, v in d.items() if isinstance(v, dict)}


@dataclass(frozen=True)
class Correctness(Record):
    ok: bool = False
    atol: float | None = None
    rtol: float | None = None
    outputs: dict[str, OutputCheck] = field(default_factory=dict, metadata=_conv(
        _outputs, lambda d: {k: v.to_json() for k, v in d.items()}))
    problems: list[str] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict)

    _always = frozenset({"outputs", "problems"})

    @property
    def max_abs(self) -> float | None:
        return max((o.max_abs or 0.0 for o in self.outputs.values()), default=None)

    @property
    def max_rel(self) -> float | None:
        return max((o.max_rel or 0.0 for o in self.outputs.values()), default=None)


@dataclass(frozen=True)
class Prepare(Record):
    """How the route's artifacts were had: built now (seconds) or from the cache (built_seconds then)."""

    cache_hit: bool | None = None
    seconds: float | None = None
    built_seconds: float | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Part(Record):
    """A measured part of a cell (a length bucket of the shapes scenario), with its own latency."""

    point: str = ""
    latency: Summary | None = field(default=None, metadata=_conv(_summary, _dump_summary))
    figures: dict[str, Any] = field(default_factory=dict)
    samples_ns: list[int] | None = None
    other: dict[str, Any] = field(default_factory=dict)

    _always = frozenset({"figures"})


# -- the record -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellResult(Record):
    """Everything one cell measured, or why it was not measured."""

    cell: Cell = field(metadata=_conv(Cell.from_json, Cell.to_json))
    status: Status = field(metadata=_conv(Status.parse, str))
    error: str = ""
    traceback: str = ""
    latency: Summary | None = field(default=None, metadata=_conv(_summary, _dump_summary))
    samples_ns: list[int] | None = None
    throughput: Throughput | None = field(default=None, metadata=_conv(_sub(Throughput), Throughput.to_json))
    open_s: float | None = None
    first_call_s: float | None = None
    cold_start_s: float | None = None
    cold_start_phases: dict[str, float] = field(default_factory=dict)
    phases: dict[str, Summary] = field(default_factory=dict, metadata=_conv(_summaries, _dump_summaries))
    payload_bytes: int | None = None
    prepare: Prepare | None = field(default=None, metadata=_conv(_sub(Prepare), Prepare.to_json))
    memory: Memory | None = field(default=None, metadata=_conv(_sub(Memory), Memory.to_json))
    cpu: Cpu | None = field(default=None, metadata=_conv(_sub(Cpu), Cpu.to_json))
    sampling: dict[str, Any] = field(default_factory=dict)
    correctness: Correctness | None = field(default=None, metadata=_conv(_sub(Correctness), Correctness.to_json))
    figures: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict, metadata=_conv(key="scenario_detail"))
    parts: list[Part] = field(default_factory=list, metadata=_conv(_many(Part), _dump_many))
    session: dict[str, Any] = field(default_factory=dict)  # what the route says of its session (describe())
    measure_s: float | None = None  # time inside the scenario's measurement (the run's efficiency)
    wall_s: float | None = None  # the cell's whole time, worker start to result
    worker_pid: int | None = None
    cpu_affinity: list[int] | None = None
    malloc_env: dict[str, str] = field(default_factory=dict)
    thread_env: dict[str, str | None] = field(default_factory=dict)
    #: the cell id this row is a part of (a length bucket); "" for a cell. Never written: parts live
    #: inside their cell's file and become rows only through ``with_parts()``
    part_of: str = ""
    record_version: int = field(default=RECORD_VERSION, compare=False)  # the file it was read from
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CellResult:
        if not isinstance(d, dict) or not isinstance(d.get("cell"), dict) or "status" not in d:
            raise ValueError("not a cell result")
        r = super().from_json(d)
        if "record_version" not in d:  # written before records had a version
            object.__setattr__(r, "record_version", 1)
        return r

    #: what the worker has always written, empty or not
    _always = frozenset({"session", "malloc_env", "thread_env", "cold_start_phases", "prepare"})

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.pop("part_of", None)
        out["record_version"] = max(self.record_version, RECORD_VERSION)  # a newer file keeps its version
        return out

    # -- what readers ask of a record ------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.cell.id

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def is_part(self) -> bool:
        return bool(self.part_of)

    @property
    def p50(self) -> float | None:
        return self.latency.p50 if self.latency else None

    @property
    def samples_per_s(self) -> float | None:
        return self.throughput.samples_per_s if self.throughput else None

    @property
    def first_error_line(self) -> str:
        return self.error.splitlines()[0] if self.error else ""

    def without_samples(self) -> CellResult:
        return replace(self, samples_ns=None, parts=[replace(p, samples_ns=None) for p in self.parts])

    def part_rows(self) -> list[CellResult]:
        """Each part as a row of its own: the cell's identity with ``.POINT`` appended to its point, the
        part's latency, figures and samples, and the cell's status, memory and correctness."""
        rows = []
        for p in self.parts:
            if not p.point or p.latency is None:
                continue
            lat = p.latency
            tp = Throughput(1 / lat.p50, self.cell.batch / lat.p50) if lat.p50 else None
            rows.append(replace(self, cell=self.cell.with_point(p.point), latency=p.latency, figures=dict(p.figures),
                                samples_ns=p.samples_ns, throughput=tp, phases={}, detail={}, cpu=None, sampling={},
                                parts=[], part_of=self.id))
        return rows


def with_parts(results: Iterable[CellResult]) -> list[CellResult]:
    """Cells and then, after each, its parts as rows of their own (summary.csv, compare, exports)."""
    out: list[CellResult] = []
    for r in results:
        out.append(r)
        out.extend(r.part_rows())
    return out


def attach_parts(results: list[CellResult]) -> list[CellResult]:
    """Rows stored the way releases before the typed record kept them (a history store: each part a row
    of its own with ``part_of``) put back inside their cells."""
    if not any(r.part_of for r in results):
        return results
    cells = {r.id: r for r in results if not r.part_of}
    by_parent: dict[str, list[Part]] = {}
    for r in results:
        parent = cells.get(r.part_of) if r.part_of else None
        if parent is not None:
            point = r.cell.point.removeprefix(parent.cell.point).removeprefix(".")
            by_parent.setdefault(parent.id, []).append(
                Part(point=point, latency=r.latency, figures=dict(r.figures), samples_ns=r.samples_ns))
    for parts in by_parent.values():  # a store keeps its rows by id ("seq16-31" before "seq8-15"): back in length order
        parts.sort(key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.point)])
    return [replace(r, parts=by_parent[r.id]) if r.id in by_parent and not r.parts else r for r in cells.values()]
