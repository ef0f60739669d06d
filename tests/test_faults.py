"""Stores and files that fail alone (issue 20): a history store that is broken, empty or another
program's costs a warning after the results, never the results; a corrupt cell file is named,
left out and measured again on resume; `latest` skips a damaged run; a model whose reference
outputs hold NaN fails only its own cells, with the reason in the first line."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_bench

FAST = ["--warmup", "0.02", "--min-time", "0.05", "--max-time", "0.15", "--concurrency-time", "0.15"]
RUN = ["run", "--models", "mlp", "--strategies", "torch", "--batch-sizes", "1,2", "--concurrency", "1",
       "--payload-sizes", "none", *FAST]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults")
    p = run_bench(*RUN, "--out", str(out), "--run-id", "base", "--no-history", cwd=out, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.parametrize("store, content", [
    ("garbage.sqlite", b"this is not a database, it is a text file somebody left here\n" * 20),
    ("empty.sqlite", b""),
])
def test_a_broken_store_is_a_warning_after_the_results(tmp_path: Path, store: str, content: bytes):
    path = tmp_path / store
    path.write_bytes(content)
    p = run_bench(*RUN, "--out", str(tmp_path), "--run-id", "r", "--history", str(path), cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    warning = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: the run was not recorded")]
    assert len(warning) == 1 and str(path) in warning[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    run = tmp_path / "r"
    assert (run / "summary.csv").is_file() and (run / "report.html").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert path.read_bytes() == content  # refused, never overwritten or started afresh


def test_another_programs_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "theirs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    p = run_bench(*RUN, "--out", str(tmp_path), "--run-id", "r", "--history", str(path), cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "another program's database (tables: invoices)" in p.stderr
    with sqlite3.connect(path) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"invoices"}


def test_a_corrupt_cell_file_is_named_left_out_and_measured_again_on_resume(measured: Path, tmp_path: Path):
    run = tmp_path / "base"
    shutil.copytree(measured / "base", run)
    victim = sorted((run / "cells").glob("*.json"))[0]
    victim.write_text('{"cell": {"model": "mlp", "strat')  # cut short, as a full disk would leave it
    r = run_bench("report", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: 1 cell file(s) could not be read" in r.stderr and victim.name in r.stderr
    assert victim.name in (run / "report.md").read_text()
    c = run_bench("compare", str(measured / "base"), str(run), cwd=tmp_path)
    assert victim.name in c.stdout and "could not be read" in c.stdout
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    p = run_bench("run", "--resume", str(run), "--no-history", cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "1 to go" in p.stderr
    assert json.loads(victim.read_text())["status"] == "ok"


def test_latest_skips_a_run_whose_run_json_is_damaged(measured: Path, tmp_path: Path):
    shutil.copytree(measured / "base", tmp_path / "good")
    bad = tmp_path / "newer"
    shutil.copytree(measured / "base", bad)
    (bad / "run.json").write_text("{ not json")
    r = run_bench("report", "latest", "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"warning: skipping {bad}: its run.json cannot be read" in r.stderr
    assert str(tmp_path / "good" / "report.html") in r.stdout


def test_nan_reference_outputs_fail_only_that_model_with_the_reason(tmp_path: Path):
    p = run_bench("run", "--model-factory", "tests.byom_models:make_log", "--model-inputs", "x:float32[batch,4]=-1..1",
                  "--model-name", "logx", "--models", "logx,mlp", "--strategies", "torch", "--batch-sizes", "1",
                  "--concurrency", "1", "--payload-sizes", "none", "--out", str(tmp_path), "--run-id", "n",
                  "--no-history", *FAST, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]  # one model failed; the other was measured
    cells = {json.loads(f.read_text())["cell"]["model"]: json.loads(f.read_text()) for f in (tmp_path / "n" / "cells").glob("*.json")}
    assert cells["mlp"]["status"] == "ok"
    err = cells["logx"]["error"]
    assert cells["logx"]["status"] == "error" and err.startswith("model logx cannot be measured:"), err
    assert "NaN or inf" in err.splitlines()[0]


def test_a_results_folder_that_cannot_take_a_write_stops_the_run_keeping_what_it_has(tmp_path: Path):
    """A per-file size limit (RLIMIT_FSIZE) small enough that a cell result with its raw samples cannot
    be written, as on a full disk: one line naming the file, status failed, no traceback, no leftovers."""
    import resource
    import subprocess
    import sys

    from tests.conftest import bench_env

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run([sys.executable, "-m", "bench", *RUN, "--out", str(tmp_path), "--run-id", "full", "--no-history",
                        "--max-time", "0.5", "--min-time", "0.3"],
                       cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "File too large" in last and "--resume" in last, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    run = tmp_path / "full"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert not list(run.rglob("*.tmp")) and not list((run / "cells").glob(".*"))


def test_a_cell_broken_in_the_base_and_fixed_now_is_not_missing_from_the_base(measured: Path, tmp_path: Path):
    base = tmp_path / "broken"
    shutil.copytree(measured / "base", base)
    victim = sorted((base / "cells").glob("*.json"))[0]
    r = json.loads(victim.read_text())
    victim.write_text(json.dumps({**r, "status": "error", "error": "RuntimeError: it broke"}))
    p = run_bench("compare", str(base), str(measured / "base"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fixed (1)" in p.stdout and "MISSING FROM THE BASELINE" not in p.stdout


def test_a_locked_store_is_a_warning_after_the_results(tmp_path: Path):
    """Another process holds the SQLite store's write lock for longer than the run waits for it."""
    import os
    import subprocess
    import sys

    from tests.conftest import bench_env

    store = tmp_path / "locked.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT)")
        conn.execute("CREATE TABLE cells (run_id TEXT)")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(120)", str(store)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        env = {**bench_env(), "BENCH_HISTORY_LOCK_WAIT_S": "1"}
        p = subprocess.run([sys.executable, "-m", "bench", *RUN, "--out", str(tmp_path), "--run-id", "r", "--history", str(store)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 0, p.stderr[-2000:]
    warning = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: the run was not recorded")]
    assert len(warning) == 1 and "locked" in warning[0], p.stderr[-2000:]
    assert (tmp_path / "r" / "report.html").is_file() and os.path.getsize(tmp_path / "r" / "summary.csv") > 0
