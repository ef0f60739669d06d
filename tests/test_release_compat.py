"""A results folder and a history store written by the release before the typed cell record (commit
8e55045: mlp and transformer, torch and onnxruntime, one and two callers, and the transformer's length
buckets) still read, render, compare, merge and gate with the same figures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from bench.history import History
from bench.record import CellResult, with_parts
from bench.results import RunDir
from tests.conftest import run_bench

FIXTURE = Path(__file__).parent / "fixtures" / "release-8e55045"


def _copy(tmp_path: Path, name: str = "old-release") -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("history.sqlite", "report.md"))
    return dest


def test_every_old_cell_file_reads_typed_and_writes_back_the_same():
    files = sorted((FIXTURE / "cells").glob("*.json"))
    assert len(files) == 10
    for f in files:
        d = json.loads(f.read_text())
        r = CellResult.from_json(d)
        assert r.record_version == 1 and r.ok and r.latency.n > 0, f.name
        back = r.to_json()
        assert back.pop("record_version") == 2
        assert back == d, f.name  # every key as the old release wrote it, nulls and empty objects included
    shaped = [r for r in RunDir(FIXTURE).load_cells() if r.parts]
    assert len(shaped) == 2 and all(len(r.parts) == 3 for r in shaped)


def test_the_summary_has_the_old_release_s_figures():
    old = pd.read_csv(FIXTURE / "summary.csv").set_index("cell_id").sort_index()
    new = RunDir(FIXTURE).frame().set_index("cell_id").sort_index()
    assert list(new.index) == list(old.index) and len(new) == 10 + 6  # the buckets are rows, as they were
    for col in old.columns.drop("run_id"):  # the run id is the folder's name
        assert col in new.columns, col
        for cid in old.index:
            a, b = old.at[cid, col], new.at[cid, col]
            if isinstance(a, float) and math.isnan(a):
                assert b is None or (isinstance(b, float) and math.isnan(b)) or b == "", (col, cid, b)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                assert math.isclose(float(a), float(b), rel_tol=1e-12), (col, cid, a, b)
            else:
                assert str(a) == str(b), (col, cid, a, b)


def test_it_renders_and_compares_with_itself(tmp_path: Path):
    run = _copy(tmp_path)
    r = run_bench("report", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the same report, word for word, as the old release rendered from these cells
    assert (run / "report.md").read_text() == (FIXTURE / "report.md").read_text()
    assert json.loads((run / "decision.json").read_text()) == json.loads((FIXTURE / "decision.json").read_text())
    c = run_bench("compare", str(run), str(_copy(tmp_path, "again")), "--json", str(tmp_path / "c.json"), cwd=tmp_path)
    assert c.returncode == 0, c.stdout + c.stderr
    changes = json.loads((tmp_path / "c.json").read_text())["changes"]
    ids = {ch["cell_id"] for ch in changes}
    assert ids == {x.id for x in with_parts(RunDir(run).load_cells())}  # cells and buckets, each judged
    assert all(ch["verdict"] == "unchanged" for ch in changes)


def test_its_halves_merge_into_the_same_run(tmp_path: Path):
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    files = sorted((a / "cells").glob("*.json"))
    for i, f in enumerate(files):
        (f if i % 2 else b / "cells" / f.name).unlink()
    m = run_bench("merge", str(tmp_path / "merged"), str(a), str(b), "--no-history", "--no-report", cwd=tmp_path)
    assert m.returncode == 0, m.stderr
    assert RunDir(tmp_path / "merged").load_cells() == RunDir(FIXTURE).load_cells()
    merged = pd.read_csv(tmp_path / "merged" / "summary.csv").drop(columns="run_id")
    whole = pd.read_csv(FIXTURE / "summary.csv").drop(columns="run_id")
    pd.testing.assert_frame_equal(merged[whole.columns], whole)  # columns added since hold nothing for it


def test_its_history_store_reads_back_each_cell_with_its_buckets_inside(tmp_path: Path):
    store = tmp_path / "history.sqlite"
    shutil.copy(FIXTURE / "history.sqlite", store)  # written by the old release: each bucket a row of its own
    with History.open(str(store)) as h:
        back = h.get("old-release").load_cells(samples=False)
    assert back == [r.without_samples() for r in RunDir(FIXTURE).load_cells()]


def test_it_gates_against_itself(tmp_path: Path):
    """The gate's comparison, run against the old folder as the baseline, passes with nothing flagged."""
    from bench.lifecycle import GateOptions, compare

    assert compare(RunDir(_copy(tmp_path)), RunDir(FIXTURE), GateOptions(), None) == 0
