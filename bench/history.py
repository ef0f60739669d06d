"""The history store: every run recorded, so CI can compare against earlier runs and draw trends.

An SQLite file by default (``results/history.sqlite``, no server), or PostgreSQL when given a URL
(``postgresql://user@host/db``), so a team's CI runners share one history. One schema for both;
the SQL below is written once, with ``?`` placeholders that the PostgreSQL adapter rewrites.

A run stored here reads back as a ``HistoryRun``, which offers what a results folder offers to
``bench compare`` and the trend page: ``id``, ``meta()`` and ``load_cells()`` (``bench.record.CellResult``s,
a cell's parts inside it).

The ``cells`` table holds one row per row of ``bench.record.with_parts``: a cell's row carries its whole record
(its parts inside), and each of its parts (a length bucket) has a row of its own, its JSON marked with
``part_of`` (the cell's id), so SQL on ``cell_id`` and ``p50_s`` finds every bucket as it always has and a
release that reads parts only from their own rows still reads them. Stores written before the typed record
hold a cell's row without its parts beside those part rows: reading puts them back inside the cell
(``bench.record.attach_parts``); a cell row that holds its parts keeps them, and its part rows are dropped.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from bench.record import CellResult, attach_parts, with_parts
from bench.results import RunDir
from plumbing.errors import UserError
from plumbing.files import dumps

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        started DOUBLE PRECISION,
        status TEXT NOT NULL,
        branch TEXT,
        commit_sha TEXT,
        machine TEXT,
        meta_json TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cells (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        cell_id TEXT NOT NULL,
        model TEXT NOT NULL,
        strategy TEXT NOT NULL,
        batch INTEGER NOT NULL,
        threads INTEGER NOT NULL,
        concurrency INTEGER NOT NULL,
        status TEXT NOT NULL,
        p50_s DOUBLE PRECISION,
        throughput_sps DOUBLE PRECISION,
        result_json TEXT NOT NULL,
        PRIMARY KEY (run_id, cell_id))""",
    "CREATE INDEX IF NOT EXISTS cells_by_cell ON cells (cell_id)",
]


_SHARD = re.compile(r"(.+)@shard-(\d+)-of-(\d+)")


def shard_key(run_id: str, i: int, n: int) -> str:
    """The history record of shard i of n of a run."""
    return f"{run_id}@shard-{i}-of-{n}"


# how long a write waits for another process's lock on an SQLite store ($BENCH_HISTORY_LOCK_WAIT_S)
LOCK_WAIT_S = float(os.environ.get("BENCH_HISTORY_LOCK_WAIT_S", "30"))


def default_url(results_root: Path) -> str:
    return str(results_root / "history.sqlite")


class History:
    """A connection to the store: ``History.open(url)`` with a path (SQLite) or a postgresql:// URL."""

    def __init__(self, conn: Any, url: str, postgres: bool) -> None:
        self.conn, self.url, self.postgres = conn, url, postgres
        for stmt in SCHEMA:
            self._exec(stmt)
        self.conn.commit()

    @classmethod
    def open(cls, url: str) -> History:
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError as e:
                raise UserError("a PostgreSQL history needs psycopg (pip install 'psycopg[binary]')") from e
            try:
                conn = psycopg.connect(url, connect_timeout=10)
            except psycopg.OperationalError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"cannot connect to the history database {_redact(url)}: {first}") from e
            return cls(conn, url, postgres=True)
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists():  # a store that is not this harness's is refused, never overwritten
            if path.is_dir():
                raise UserError(f"history file {path} is a folder")
            with open(path, "rb") as f:
                head = f.read(16)
            if not head:
                raise UserError(f"history file {path} is empty (truncated?); move it away to start a new history")
            if head != b"SQLite format 3\x00":
                raise UserError(f"history file {path} is not an SQLite database; refusing to write a history into it")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=LOCK_WAIT_S)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as e:
            raise UserError(f"cannot open the history file {path}: {e}") from e
        if tables and not {"runs", "cells"} <= tables:
            conn.close()
            raise UserError(f"history file {path} is another program's database (tables: {', '.join(sorted(tables)[:6])}); "
                            "refusing to write into it")
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            return cls(conn, str(path), postgres=False)
        except sqlite3.Error as e:
            conn.close()
            raise UserError(f"cannot use the history file {path}: {e}") from e

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, params: tuple | list = ()) -> Any:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur

    # -- writing ------------------------------------------------------------------------------------
    def record(self, run: RunDir) -> int:
        """Store a finished run (again, replacing an earlier copy of the same record). Returns the number of cells stored (a cell's
        parts, stored as rows of their own beside it, are not counted).

        A run is stored under its own id (``run_id`` in its run.json, which a merged run keeps from its
        shards). One shard of a run (``--shard i/n``) is stored as ``ID@shard-i-of-n`` with status
        ``shard``: shards recorded from several machines never replace each other, and the run's id
        resolves only once every shard is there (``get``), or to the merged run."""
        meta = run.meta()
        env = meta.get("environment", {})
        git = env.get("git") or {}
        cells = run.load_cells()
        run_id = str(meta.get("run_id") or run.id)
        status = meta.get("status", "unknown")
        if meta.get("shard"):
            i, n = (int(x) for x in str(meta["shard"]).split("/"))
            run_id, status = shard_key(run_id, i, n), ("shard" if status == "complete" else f"shard {status}")
        self._exec("DELETE FROM cells WHERE run_id = ?", (run_id,))
        self._exec("DELETE FROM runs WHERE run_id = ?", (run_id,))
        self._exec("INSERT INTO runs (run_id, started, status, branch, commit_sha, machine, meta_json) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (run_id, meta.get("started"), status, git.get("branch"), git.get("commit"),
                    f"{env.get('hostname', '')} ({env.get('cpu_model', '')}, {env.get('logical_cores', '')} cores)",
                    dumps(meta, indent=None)))
        for r in with_parts(cells):
            c = r.cell
            self._exec("INSERT INTO cells (run_id, cell_id, model, strategy, batch, threads, concurrency, status, "
                       "p50_s, throughput_sps, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, c.id, c.model, c.strategy, c.batch, c.threads, c.concurrency,
                        str(r.status), r.p50, r.samples_per_s, dumps(_stored(r), indent=None)))
        self.conn.commit()
        return len(cells)

    # -- reading ------------------------------------------------------------------------------------
    def runs(self, branch: str | None = None) -> list[dict[str, Any]]:
        """Recorded runs, oldest first."""
        sql = "SELECT run_id, started, status, branch, commit_sha, machine FROM runs"
        params: tuple = ()
        if branch is not None:
            sql, params = sql + " WHERE branch = ?", (branch,)
        rows = self._exec(sql + " ORDER BY started, run_id", params).fetchall()
        return [dict(zip(("run_id", "started", "status", "branch", "commit", "machine"), r)) for r in rows]

    def get(self, run_id: str) -> HistoryRun | None:
        """A recorded run, or the union of its shards once all are recorded. UserError for a run of
        which only some shards are recorded: comparing against part of a run would pass on too little."""
        row = self._exec("SELECT meta_json, status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row and not str(row[1]).startswith("shard"):
            return HistoryRun(self, run_id, json.loads(row[0]))
        shards = self._shards(run_id)
        if not shards:
            return HistoryRun(self, run_id, json.loads(row[0])) if row else None
        n = shards[0][1]
        have = sorted(i for _, _, i, status in shards if status == "shard")
        metas = [json.loads(m) for m, _, _, _ in shards]
        commits = {((m.get("environment") or {}).get("git") or {}).get("commit") for m in metas}
        configs = {json.dumps(m.get("config"), sort_keys=True) for m in metas}
        if len(commits) > 1 or len(configs) > 1:  # e.g. last night's shard 2 beside tonight's shard 1
            raise UserError(f"the shards of run {run_id} in the history come from different "
                            f"{'commits' if len(commits) > 1 else 'configs'}, so they are not one run; give each "
                            "CI run its own --run-id (e.g. nightly-$GITHUB_RUN_ID)")
        if have != list(range(1, n + 1)):
            raise UserError(f"run {run_id} has {len(have)} of its {n} shards recorded complete in the history "
                            f"(shards {', '.join(map(str, have)) or 'none'}); record the others, or the merged run")
        return HistoryRun(self, run_id, json.loads(shards[0][0]), [shard_key(run_id, i, n) for i in have])

    def _shards(self, run_id: str) -> list[tuple[str, int, int, str]]:
        """(meta_json, n, i, status) of every shard record of ``run_id``."""
        out = []
        for key, meta_json, status in self._exec("SELECT run_id, meta_json, status FROM runs WHERE run_id LIKE ?",
                                                 (f"{run_id}@shard-%",)).fetchall():
            m = _SHARD.fullmatch(key)
            if m and m[1] == run_id:
                out.append((meta_json, int(m[3]), int(m[2]), status))
        return out

    def latest(self, branch: str | None = None) -> HistoryRun | None:
        """The newest complete run: recorded whole, merged, or with every shard recorded."""
        candidates: list[tuple[float, str]] = []
        for r in self.runs(branch):
            if r["status"] == "complete":
                candidates.append((r["started"] or 0.0, r["run_id"]))
            elif r["status"] == "shard" and (m := _SHARD.fullmatch(r["run_id"])):
                candidates.append((r["started"] or 0.0, m[1]))
        for _, run_id in sorted(set(candidates), reverse=True):
            try:
                found = self.get(run_id)
            except UserError:  # some shards still missing: not a run to compare against
                continue
            if found is not None:
                return found
        return None

    def cells(self, run_id: str, samples: bool = True, unreadable: list[str] | None = None) -> list[CellResult]:
        """The cells of one record, each with its parts inside it (as ``RunDir.load_cells``). A row that is
        not a cell result is skipped, and named in ``unreadable`` if given."""
        return attach_parts(self._rows(run_id, samples, unreadable))

    def _rows(self, run_id: str, samples: bool = True, unreadable: list[str] | None = None) -> list[CellResult]:
        """Every stored row of one record, as stored: cells, and parts marked ``part_of``."""
        out = []
        for cell_id, text in self._exec("SELECT cell_id, result_json FROM cells WHERE run_id = ? ORDER BY cell_id",
                                        (run_id,)).fetchall():
            try:
                r = CellResult.from_json(json.loads(text))
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
                if unreadable is not None:
                    unreadable.append(f"{run_id}: {cell_id} ({type(e).__name__})")
                continue
            out.append(r if samples else r.without_samples())
        return out


def _stored(r: CellResult) -> dict[str, Any]:
    """A row's JSON in the store: the record, a part's marked with the cell it is a part of."""
    d = r.to_json()
    if r.part_of:
        d["part_of"] = r.part_of
    return d


class HistoryRun:
    """A run read back from the history store; offers what ``bench compare`` and the trend page use."""

    def __init__(self, history: History, run_id: str, meta: dict[str, Any], records: list[str] | None = None) -> None:
        self.history, self.id, self._meta = history, run_id, meta
        self.records = records or [run_id]  # the shards' records, for a run recorded shard by shard
        if records:
            self._meta = {**meta, "status": "complete", "shard": None, "recorded_as": records}
        self.path = Path(f"{history.url if not history.postgres else _redact(history.url)}#{run_id}")

    def meta(self) -> dict[str, Any]:
        return self._meta

    def load_cells(self, samples: bool = True) -> list[CellResult]:
        """Every readable cell of the run (of each of its shards' records), its parts inside it, as
        ``RunDir.load_cells`` gives them; rows that are not cell results are named in ``self.unreadable``."""
        self.unreadable: list[str] = []
        return [r for key in self.records for r in self.history.cells(key, samples, self.unreadable)]


def _redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"
