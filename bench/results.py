"""Run folders: one JSON file per finished cell (written atomically), the run's config and
environment, and a tidy summary (CSV/JSON, or a pandas DataFrame in code).

A run killed halfway leaves every finished cell readable; ``bench run --resume DIR`` runs the rest.

Layout of ``results/<run-id>/``::

    run.json         config, environment, status
    cells/<key>.json one per finished cell: status (ok | invalid: ran, outputs wrong | error |
                     skipped), summary stats, raw samples (ns), memory, correctness
    summary.csv      one row per cell (also summary.json)
    report.html, report.md, logs/
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

# errors that mean a folder cannot take what is written to it (full, read-only, over a size limit):
# the run stops there, keeping what it has, instead of failing every cell after it
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM})
EX_CANNOT_WRITE = 75
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # a worker's exit status when it cannot even write that it could not write


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp's 0600 hides results from a CI reader)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # write()/fsync() name no file: name the one meant
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """inf/nan are not JSON: store them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def atomic_write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, dumps(obj, indent))


@dataclass(frozen=True, order=True)
class Cell:
    """One point of the matrix, measured in its own worker process: the one key type every module
    uses (ids in files, resumes, comparisons and history are ``Cell.id``)."""

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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        from bench import scenarios

        return cls(d["model"], d["strategy"], int(d["batch"]), int(d["threads"]), int(d["concurrency"]),
                   d.get("malloc", ""), scenarios.infer(d), str(d.get("point", "")))


RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
LOCK_FILE = ".lock"


def check_run_id(run_id: str) -> str:
    """A run id names one folder under the results root: a plain name, never a path."""
    if not RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise UserError(f"run id {run_id[:80]!r} must be a plain name: up to 128 letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit (no path separators or '..')")
    return run_id


class RunLock:
    """An exclusive lock on a run folder for as long as one process writes into it: ``.lock`` holds
    the PID, locked with flock, so the lock dies with the process and a stale file is simply taken over."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        path = folder / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UserError(f"run folder {folder} is in use by process {holder} (its lock: {path}); "
                                "wait for it to finish or stop it") from None
            try:  # the holder before us may have removed the file as we opened it: lock the one in place
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return cls(path, fd)
            os.close(fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)  # while still locked: whoever waits re-checks the file
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def lock(self) -> RunLock:
        """Hold the folder for this process (UserError naming the PID that holds it, if one does)."""
        return RunLock.acquire(self.path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def cells_dir(self) -> Path:
        return self.path / "cells"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.json"

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "run.json").read_text())
        except FileNotFoundError as e:
            raise UserError(f"{self.path} is not a results folder (no run.json)") from e
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path / 'run.json'} is not valid JSON: {e}") from e

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.path / "run.json", meta)

    def write_cell(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.cell_path(Cell.from_json(result["cell"])), result, indent=None)

    def finished(self) -> set[str]:
        return {r["cell"]["id"] for r in self.load_cells(samples=False)}

    def load_cells(self, samples: bool = True) -> list[dict[str, Any]]:
        """Every readable cell result. A file that is not a cell result (corrupted, hand-edited, cut
        short by a full disk) is skipped and named in ``self.unreadable``: the report and compare say
        so, and ``--resume`` measures that cell again."""
        out = []
        self.unreadable: list[str] = []
        for f in sorted(self.cells_dir.glob("*.json")):
            try:
                r = json.loads(f.read_text())
                if not isinstance(r, dict) or not isinstance(r.get("cell"), dict) or "status" not in r:
                    raise ValueError("not a cell result")
                r["cell"] = Cell.from_json(r["cell"]).to_json()  # older records gain their scenario
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
                self.unreadable.append(f"{f.name} ({type(e).__name__})")
                continue
            parts = r.pop("parts", None) or []
            if not samples:
                r.pop("samples_ns", None)
            out.append(r)
            out.extend(_part_rows(r, parts, samples))
        return out

    def frame(self):  # -> pandas.DataFrame
        return summary_frame(self.load_cells(samples=False), self.id)

    def write_summary(self) -> None:
        df = self.frame()
        atomic_write_text(self.path / "summary.csv", df.to_csv(index=False))
        atomic_write_text(self.path / "summary.json", df.to_json(orient="records", indent=1))


PART_FIELDS = ("latency", "samples_ns", "figures", "throughput", "phases", "scenario_detail", "cpu", "sampling")


def _part_rows(r: dict[str, Any], parts: list[Any], samples: bool) -> list[dict[str, Any]]:
    """A cell whose scenario measured parts (a length bucket) gives each its own row: the cell's identity
    with ``.POINT`` appended to its point, the part's latency and figures, the rest (status, memory,
    correctness) the cell's."""
    rows = []
    for p in parts:
        if not isinstance(p, dict) or not isinstance(p.get("point"), str) or not isinstance(p.get("latency"), dict):
            continue
        cell = {**r["cell"], "point": f"{r['cell'].get('point') or ''}.{p['point']}".lstrip(".")}
        row = {k: v for k, v in r.items() if k not in PART_FIELDS}
        row.update(cell=Cell.from_json(cell).to_json(), latency=p["latency"], figures=p.get("figures") or {}, part_of=r["cell"]["id"])
        lat = p["latency"]
        if lat.get("p50"):
            row["throughput"] = {"calls_per_s": 1 / lat["p50"], "samples_per_s": r["cell"]["batch"] / lat["p50"]}
        if samples and p.get("samples_ns") is not None:
            row["samples_ns"] = p["samples_ns"]
        rows.append(row)
    return rows


def _get(d: dict | None, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return default
        d = d[k]
    return d


SUMMARY_COLUMNS = [
    "run_id", "cell_id", "scenario", "point", "model", "strategy", "batch", "threads", "concurrency", "malloc",
    "status", "valid",
    "error", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "iqr_ms", "ci_low_ms", "ci_high_ms",
    "max_ms", "p99_ci_low_ms", "p99_ci_high_ms",
    "rel_ci", "noisy", "converged", "samples", "throughput_sps", "calls_per_s", "cold_start_ms",
    "first_call_ms", "open_ms", "prepare_s", "cache_hit", "payload_bytes", "mem_baseline_mb",
    "mem_steady_mb", "mem_peak_mb", "mem_added_mb", "processes", "max_abs_err", "max_rel_err",
    "cpu_ms_per_inference",
]


def summary_columns() -> list[str]:
    """The fixed columns, then each registered scenario's own figures, then ``vs_torch_p50``."""
    from bench import scenarios

    extra = [c for name in scenarios.names() for c in scenarios.get(name).figure_columns]
    return SUMMARY_COLUMNS + [c for c in dict.fromkeys(extra) if c not in SUMMARY_COLUMNS] + ["vs_torch_p50"]


def summary_frame(results: list[dict[str, Any]], run_id: str = ""):
    """Tidy table, one row per cell. ``vs_torch_p50`` is p50 over the same cell's torch p50."""
    import pandas as pd

    mb = 1024 * 1024
    rows = []
    for r in results:
        c = r["cell"]
        lat = r.get("latency") or {}
        corr = r.get("correctness") or {}
        outs = corr.get("outputs", {}).values()
        rows.append({
            **{k: v for k, v in (r.get("figures") or {}).items() if isinstance(k, str)},
            "run_id": run_id, "cell_id": c["id"], "scenario": c.get("scenario", "latency"), "point": c.get("point", ""),
            "model": c["model"], "strategy": c["strategy"],
            "batch": c["batch"], "threads": c["threads"], "concurrency": c["concurrency"],
            "malloc": c.get("malloc", ""), "status": r["status"], "valid": r["status"] == "ok", "error": r.get("error") or "",
            **{f"{k}_ms": (lat[k] * 1e3 if lat.get(k) is not None else None)
               for k in ("p50", "p90", "p99", "mean", "stdev", "iqr", "ci_low", "ci_high", "max")},
            "p99_ci_low_ms": lat["p99_ci"][0] * 1e3 if lat.get("p99_ci") else None,
            "p99_ci_high_ms": lat["p99_ci"][1] * 1e3 if lat.get("p99_ci") else None,
            "rel_ci": lat.get("rel_ci"), "noisy": lat.get("noisy"),
            "converged": _get(r, "sampling", "converged"), "samples": lat.get("n"),
            "throughput_sps": _get(r, "throughput", "samples_per_s"),
            "calls_per_s": _get(r, "throughput", "calls_per_s"),
            "cold_start_ms": _ms(r.get("cold_start_s")), "first_call_ms": _ms(r.get("first_call_s")),
            "open_ms": _ms(r.get("open_s")), "prepare_s": _get(r, "prepare", "seconds"),
            "cache_hit": _get(r, "prepare", "cache_hit"), "payload_bytes": r.get("payload_bytes"),
            "mem_baseline_mb": _scaled(_get(r, "memory", "baseline_rss"), mb),
            "mem_steady_mb": _scaled(_get(r, "memory", "steady_rss"), mb),
            "mem_peak_mb": _scaled(_get(r, "memory", "peak_rss"), mb),
            "mem_added_mb": _scaled(_get(r, "memory", "added_steady"), mb),
            "processes": len(_get(r, "memory", "processes", default=[])) or None,
            "max_abs_err": max((o.get("max_abs", 0.0) for o in outs), default=None),
            "max_rel_err": max((o.get("max_rel") or 0.0 for o in outs), default=None),
            "cpu_ms_per_inference": _scaled(_get(r, "cpu", "s_per_inference"), 1e-3),
        })
    columns = summary_columns()
    seen = [k for row in rows for k in row if k not in columns]  # figures of a scenario not registered here
    df = pd.DataFrame(rows, columns=columns[:-1] + list(dict.fromkeys(seen)))
    for col in df.columns:  # a column that is None in every row (a p99 nowhere estimable) is still numeric
        if col.endswith(("_ms", "_mb", "_s", "_rps", "_fraction", "_per_inference")):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if df.empty:
        df["vs_torch_p50"] = []
        return df
    dims = ["scenario", "point", "model", "batch", "threads", "concurrency", "malloc"]
    base = df[(df.strategy == "torch") & df.valid].set_index(dims)["p50_ms"]
    keys = list(zip(*(df[d] for d in dims)))
    df["vs_torch_p50"] = [
        (p / base[k]) if (k in base.index and p is not None and v) else None
        for k, p, v in zip(keys, df.p50_ms, df.valid)
    ]
    return df.sort_values(["model", "batch", "threads", "concurrency", "malloc", "scenario", "point", "strategy"]).reset_index(drop=True)


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def _scaled(v: float | None, unit: float) -> float | None:
    return None if v is None else v / unit


def resolve_run(arg: str | None, root: Path) -> RunDir:
    """A run folder path, a run id under the results root, ``branch:NAME`` (the newest complete run
    made on that git branch), or (None / 'latest') the newest run."""
    if arg and arg.startswith("branch:"):
        branch = arg.split(":", 1)[1]
        found = []
        for meta_file in root.glob("*/run.json"):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                _skipped(meta_file, e)
                continue
            if not isinstance(meta, dict):
                continue
            if meta.get("status") == "complete" and (meta.get("environment", {}).get("git") or {}).get("branch") == branch:
                found.append((meta.get("started", 0), meta_file.parent))
        if not found:
            raise UserError(f"no complete run on branch {branch!r} under {root}")
        return RunDir(max(found)[1])
    if arg and arg != "latest":
        for cand in (Path(arg), root / arg):
            if (cand / "run.json").is_file():
                return RunDir(cand)
        raise UserError(f"no results folder at {arg!r} (looked for run.json in {arg} and {root / arg})")
    runs = sorted((p for p in root.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"no runs under {root}; run `python -m bench run` first")
    for meta_file in reversed(runs):  # the newest run that can be read
        try:
            if isinstance(json.loads(meta_file.read_text()), dict):
                return RunDir(meta_file.parent)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            _skipped(meta_file, e)
    raise UserError(f"no readable run under {root} (every run.json is damaged)")


def _skipped(meta_file: Path, e: Exception) -> None:
    import sys

    print(f"warning: skipping {meta_file.parent}: its run.json cannot be read ({type(e).__name__})", file=sys.stderr)
