"""Run folders: one JSON file per finished cell (written atomically), the run's config and
environment, and a tidy summary (CSV/JSON, or a pandas DataFrame in code).

A run killed halfway leaves every finished cell readable; ``bench run --resume DIR`` runs the rest.

Layout of ``results/<run-id>/``::

    run.json         config, environment, status
    cells/<key>.json one per finished cell: a bench.record.CellResult as JSON (its status, latency
                     summary and raw samples, memory, CPU, correctness, its parts)
    summary.csv      one row per cell and per part of a cell (also summary.json)
    report.html, report.md, logs/
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from bench.record import Cell, CellResult, Status, with_parts
from plumbing.errors import UserError
from plumbing.files import atomic_write_json, atomic_write_text

__all__ = ["Cell", "CellResult", "RunDir", "Status", "summary_frame"]

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

    def write_cell(self, result: CellResult) -> None:
        atomic_write_json(self.cell_path(result.cell), result.to_json(), indent=None)

    def finished(self) -> set[str]:
        return {r.id for r in self.load_cells(samples=False)}

    def load_cells(self, samples: bool = True) -> list[CellResult]:
        """Every readable cell record, its parts (length buckets) inside it. A file that is not a cell
        result (corrupted, hand-edited, cut short by a full disk) is skipped and named in ``self.unreadable``:
        the report and compare say so, and ``--resume`` measures that cell again."""
        out = []
        self.unreadable: list[str] = []
        for f in sorted(self.cells_dir.glob("*.json")):
            try:
                r = CellResult.from_json(json.loads(f.read_text()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
                self.unreadable.append(f"{f.name} ({type(e).__name__})")
                continue
            out.append(r if samples else r.without_samples())
        return out

    def frame(self):  # -> pandas.DataFrame
        return summary_frame(self.load_cells(samples=False), self.id)

    def write_summary(self, cells: list[CellResult] | None = None) -> None:
        """summary.csv and summary.json from the folder's cells, or from ``cells`` where the caller holds
        them all already (the runner, after each cell: reading every file again made a 1,600-cell run
        spend minutes re-reading)."""
        df = self.frame() if cells is None else summary_frame(cells, self.id)
        atomic_write_text(self.path / "summary.csv", df.to_csv(index=False))
        atomic_write_text(self.path / "summary.json", df.to_json(orient="records", indent=1))


SUMMARY_COLUMNS = [
    "run_id", "cell_id", "scenario", "point", "model", "strategy", "batch", "threads", "concurrency", "malloc",
    "status", "valid",
    "error", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "iqr_ms", "ci_low_ms", "ci_high_ms",
    "max_ms", "p99_ci_low_ms", "p99_ci_high_ms",
    "rel_ci", "noisy", "converged", "process_spread_fraction", "samples", "throughput_sps", "calls_per_s", "cold_start_ms",
    "first_call_ms", "open_ms", "prepare_s", "cache_hit", "payload_bytes", "mem_baseline_mb",
    "mem_steady_mb", "mem_peak_mb", "mem_added_mb", "processes", "max_abs_err", "max_rel_err",
    "cpu_ms_per_inference",
]


def summary_columns() -> list[str]:
    """The fixed columns, then each registered scenario's own figures, then ``vs_torch_p50``."""
    from bench import scenarios

    extra = [c for name in scenarios.names() for c in scenarios.get(name).figure_columns]
    return SUMMARY_COLUMNS + [c for c in dict.fromkeys(extra) if c not in SUMMARY_COLUMNS] + ["vs_torch_p50"]


def summary_frame(results: list[CellResult], run_id: str = ""):
    """Tidy table, one row per cell and one per part of a cell (a length bucket). ``vs_torch_p50`` is p50
    over the same cell's torch p50."""
    import pandas as pd

    mb = 1024 * 1024
    table = []
    for r in with_parts(results):
        c, lat, mem, corr = r.cell, r.latency, r.memory, r.correctness
        table.append({
            **{k: v for k, v in r.figures.items() if isinstance(k, str)},
            "run_id": run_id, "cell_id": c.id, "scenario": c.scenario, "point": c.point,
            "model": c.model, "strategy": c.strategy, "batch": c.batch, "threads": c.threads,
            "concurrency": c.concurrency, "malloc": c.malloc, "status": str(r.status), "valid": r.ok, "error": r.error,
            **{f"{k}_ms": _ms(getattr(lat, k) if lat else None)
               for k in ("p50", "p90", "p99", "mean", "stdev", "iqr", "ci_low", "ci_high", "max")},
            "p99_ci_low_ms": lat.p99_ci[0] * 1e3 if lat and lat.p99_ci else None,
            "p99_ci_high_ms": lat.p99_ci[1] * 1e3 if lat and lat.p99_ci else None,
            "rel_ci": lat.rel_ci if lat else None, "noisy": lat.noisy if lat else None,
            "converged": r.sampling.get("converged"), "samples": lat.n if lat else None,
            "process_spread_fraction": r.sampling.get("process_spread"),
            "throughput_sps": r.throughput.samples_per_s if r.throughput else None,
            "calls_per_s": r.throughput.calls_per_s if r.throughput else None,
            "cold_start_ms": _ms(r.cold_start_s), "first_call_ms": _ms(r.first_call_s),
            "open_ms": _ms(r.open_s), "prepare_s": r.prepare.seconds if r.prepare else None,
            "cache_hit": r.prepare.cache_hit if r.prepare else None, "payload_bytes": r.payload_bytes,
            "mem_baseline_mb": _scaled(mem and mem.baseline_rss, mb),
            "mem_steady_mb": _scaled(mem and mem.steady_rss, mb),
            "mem_peak_mb": _scaled(mem and mem.peak_rss, mb),
            "mem_added_mb": _scaled(mem and mem.added_steady, mb),
            "processes": (len(mem.processes) or None) if mem else None,
            "max_abs_err": corr.max_abs if corr else None,
            "max_rel_err": corr.max_rel if corr else None,
            "cpu_ms_per_inference": _scaled(r.cpu.s_per_inference if r.cpu else None, 1e-3),
        })
    columns = summary_columns()
    seen = [k for row in table for k in row if k not in columns]  # figures of a scenario not registered here
    df = pd.DataFrame(table, columns=columns[:-1] + list(dict.fromkeys(seen)))
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
