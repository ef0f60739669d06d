"""The history store, on SQLite and on a real PostgreSQL server these tests start: the same runs
recorded in both read back the same, and compare, branch look-up and the trend page work from it."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.history import History
from bench.record import CellResult, with_parts
from plumbing.processes import die_with_parent
from tests.conftest import IN_CI, run_bench

RUNS = ("base", "rerun", "slow")


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (a free port), trust auth, no fsync; stopped after."""
    bindir = _postgres_bin()
    if bindir is None:
        why = "no PostgreSQL server binaries (apt-get install postgresql; `nox -s tests` does it as root)"
        if IN_CI:
            pytest.fail(f"PostgreSQL must run in CI: {why}")
        pytest.skip(why)
    data = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    run_as = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        run_as = (pw.pw_uid, pw.pw_gid)

    def as_user() -> None:
        if run_as:
            os.setgid(run_as[1])
            os.setuid(run_as[0])
        die_with_parent()  # after setuid: changing credentials clears the parent-death signal

    subprocess.run([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "bench", "--no-sync"],
                   check=True, capture_output=True, preexec_fn=as_user, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(bindir / "postgres"), "-D", str(data / "db"), "-h", "127.0.0.1", "-p", str(port),
                               "-k", str(data), "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=as_user)
    url = f"postgresql://bench@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def _cells_by_run(h: History) -> dict[str, dict[str, tuple[str, float | None]]]:
    """Per run, every row (a cell, and each part of a cell apart): its status and p50."""
    return {r["run_id"]: {c.id: (str(c.status), c.p50) for c in with_parts(h.cells(r["run_id"], samples=False))}
            for r in h.runs()}


def test_runs_are_recorded_in_sqlite_by_default(runs: Path, tmp_path: Path):
    p = run_bench("history", "--out", str(runs), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "3 runs in" in p.stdout and all(r in p.stdout for r in RUNS)
    with History.open(str(runs / "history.sqlite")) as h:
        assert [r["run_id"] for r in h.runs()] == list(RUNS)
        slow = h.get("slow")
        assert slow is not None and len(slow.load_cells()) == 4 and slow.load_cells()[0].samples_ns
        assert all(isinstance(c, CellResult) for c in slow.load_cells())
        assert not any(c.samples_ns for c in slow.load_cells(samples=False))


SHAPES = "transformer/onnxruntime/b1/t1/c1/shapes@lognormal"


def _latency(samples_ns: list[int]) -> dict:
    from bench.stats import summarize

    return summarize([x / 1e9 for x in samples_ns]).to_json()


def _shapes_cell(parts: bool) -> dict:
    """A shapes cell's JSON as a results folder holds it (its buckets inside, ``parts=True``) or as a store
    written before the typed record held its row (no parts)."""
    cell = {"model": "transformer", "strategy": "onnxruntime", "batch": 1, "threads": 1, "concurrency": 1,
            "scenario": "shapes", "point": "lognormal", "id": SHAPES}
    samples = [1000 + i % 50 for i in range(200)]
    d = {"cell": cell, "status": "ok", "latency": _latency(samples), "samples_ns": samples,
         "throughput": {"calls_per_s": 1e6, "samples_per_s": 1e6}, "memory": {"peak_rss": 123}}
    if parts:
        d["parts"] = [{"point": f"seq{n}", "latency": _latency(_bucket(n)), "figures": {"length": n},
                       "samples_ns": _bucket(n)} for n in (16, 64)]
    return d


def _bucket(n: int) -> list[int]:
    return [n * 100 + i % 7 for i in range(60)]


def test_a_store_holding_parts_as_rows_of_their_own_reads_back_as_cells_with_their_parts(tmp_path: Path):
    """Releases before the typed record stored a length bucket as a row of its own, marked ``part_of``, and its
    cell's row without ``parts``: read back, the store gives the cell with its buckets inside, like a folder."""
    import json

    with History.open(str(tmp_path / "old.sqlite")) as h:
        h._exec("INSERT INTO runs (run_id, started, status, meta_json) VALUES (?, ?, ?, ?)",
                ("old", 1.0, "complete", json.dumps({"run_id": "old", "status": "complete"})))
        stored = [_shapes_cell(parts=False)]
        for n in (16, 64):  # as the old RunDir.load_cells made each bucket's row
            cell = {**stored[0]["cell"], "point": f"lognormal.seq{n}", "id": f"{SHAPES}.seq{n}"}
            lat = _latency(_bucket(n))
            stored.append({"cell": cell, "status": "ok", "latency": lat, "figures": {"length": n}, "part_of": SHAPES,
                           "throughput": {"calls_per_s": 1 / lat["p50"], "samples_per_s": 1 / lat["p50"]},
                           "samples_ns": _bucket(n), "memory": {"peak_rss": 123}})
        for d in stored:
            c = d["cell"]
            h._exec("INSERT INTO cells (run_id, cell_id, model, strategy, batch, threads, concurrency, status, p50_s, "
                    "throughput_sps, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ("old", c["id"], c["model"], c["strategy"], 1, 1, 1, "ok", d["latency"]["p50"], None, json.dumps(d)))
        h.conn.commit()
        cells = h.get("old").load_cells()
        assert [c.id for c in cells] == [SHAPES] and not cells[0].is_part
        (r,) = cells
        assert [p.point for p in r.parts] == ["seq16", "seq64"]
        assert [p.samples_ns for p in r.parts] == [_bucket(16), _bucket(64)]
        assert [p.figures for p in r.parts] == [{"length": 16}, {"length": 64}]
        assert r.parts[0].latency.p50 == pytest.approx(_latency(_bucket(16))["p50"])
        assert r.samples_ns == _shapes_cell(parts=False)["samples_ns"] and r.memory.peak_rss == 123
        # the buckets as rows again, with the ids they were stored under
        assert [x.id for x in with_parts(cells)] == [SHAPES, f"{SHAPES}.seq16", f"{SHAPES}.seq64"]
        assert with_parts(cells)[1].part_of == SHAPES
        (bare,) = h.get("old").load_cells(samples=False)
        assert bare.samples_ns is None and all(p.samples_ns is None for p in bare.parts) and len(bare.parts) == 2


def test_a_cell_is_stored_whole_and_each_part_has_a_row_of_its_own(tmp_path: Path):
    """A cell recorded now: its row holds the whole record, and each bucket has a row of its own (SQL on
    cell_id and p50_s finds it, marked part_of); read back, the cell is what the folder holds."""
    import json

    from bench.results import RunDir

    run = RunDir(tmp_path / "new")
    run.write_meta({"run_id": "new", "status": "complete", "started": 2.0, "environment": {}})
    run.write_cell(CellResult.from_json(_shapes_cell(parts=True)))
    with History.open(str(tmp_path / "h.sqlite")) as h:
        assert h.record(run) == 1  # cells, not bucket rows
        stored = {cid: (p50, json.loads(text)) for cid, p50, text in
                  h._exec("SELECT cell_id, p50_s, result_json FROM cells WHERE run_id = ?", ("new",)).fetchall()}
        assert set(stored) == {SHAPES, f"{SHAPES}.seq16", f"{SHAPES}.seq64"}
        assert len(stored[SHAPES][1]["parts"]) == 2 and "part_of" not in stored[SHAPES][1]
        assert stored[f"{SHAPES}.seq64"][1]["part_of"] == SHAPES
        assert stored[f"{SHAPES}.seq64"][0] == pytest.approx(_latency(_bucket(64))["p50"])
        back = h.get("new").load_cells()
        assert back == run.load_cells() and len(back[0].parts) == 2
        assert h.get("new").load_cells(samples=False) == run.load_cells(samples=False)


def test_compare_and_gate_from_the_history_alone(runs: Path, tmp_path: Path):
    """With no results folders at hand (another CI runner), run ids resolve in the history store."""
    hist = str(runs / "history.sqlite")
    p = run_bench("compare", "base", "slow", "--history", hist, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 1 and "mlp/slow-test/b1/t1/c1" in p.stdout, p.stdout + p.stderr
    branch = History.open(hist).get("base").meta()["environment"]["git"]["branch"]
    p = run_bench("compare", "base", f"branch:{branch}", "--history", hist, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 1 and "compare base -> slow" in p.stdout, p.stdout + p.stderr  # the newest on the branch
    p = run_bench("compare", "base", "nope", "--history", hist, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "nor is 'nope' in the history store" in p.stderr


def test_trend_page_marks_the_planted_regression(runs: Path, tmp_path: Path):
    page = tmp_path / "trend.html"
    p = run_bench("trend", "--out", str(runs), "--file", str(page), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "trend over 3 runs" in p.stdout
    html = page.read_text()
    assert "data:image/png;base64," in html and "mlp/slow-test/b1/t1/c1" in html and "regression" in html
    assert int(p.stdout.split("(")[1].split()[0]) >= 1  # "(N regressions marked)"


def test_postgresql_holds_the_same_history(runs: Path, postgres_url: str, tmp_path: Path):
    p = run_bench("history", "--history", postgres_url, "--out", str(runs), "--record", *RUNS, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "3 runs in PostgreSQL" in p.stdout
    with History.open(postgres_url) as pg, History.open(str(runs / "history.sqlite")) as lite:
        assert _cells_by_run(pg) == _cells_by_run(lite)
        assert pg.get("slow").load_cells()[0].samples_ns == lite.get("slow").load_cells()[0].samples_ns
        assert pg.get("slow").load_cells() == lite.get("slow").load_cells()
    # recording a run again replaces it rather than duplicating it
    p = run_bench("history", "--history", postgres_url, "--out", str(runs), "--record", "slow", cwd=tmp_path)
    assert "3 runs in PostgreSQL" in p.stdout
    p = run_bench("compare", "base", "slow", "--history", postgres_url, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 1 and "REGRESSIONS" in p.stdout, p.stdout + p.stderr
    p = run_bench("trend", "--history", postgres_url, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "trend.html").exists(), p.stderr


def test_unreachable_postgresql_is_one_line(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    p = run_bench("history", "--history", f"postgresql://bench:secret@127.0.0.1:{port}/x", cwd=tmp_path)
    assert p.returncode == 2 and "cannot connect to the history database" in p.stderr, p.stderr
    assert "secret" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_shards_recorded_at_once_into_one_postgresql_make_one_run(postgres_url: str, tmp_path: Path):
    """Two shards of one run (as a CI matrix runs them: same --run-id, own folders) record into one
    PostgreSQL at the same time: neither replaces the other, the run id resolves to both together
    only, a half-recorded run is refused as a baseline, the merged run keeps the run's id, and a
    baseline lacking cells the new run measured fails the comparison unless that is expected."""
    from plumbing.errors import UserError
    from tests.conftest import FAST, bench_env

    matrix = ["--models", "mlp", "--strategies", "torch", "--batch-sizes", "1,2", "--concurrency", "1",
              "--payload-sizes", "none", "--no-report", *FAST]
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", *matrix, "--run-id", "nightly", "--shard", f"{i}/2",
                               "--out", str(tmp_path / f"runner{i}"), "--history", postgres_url],
                              cwd=tmp_path, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2)]
    for p in procs:
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out[-2000:]
    with History.open(postgres_url) as h:
        shards = {r["run_id"]: r["status"] for r in h.runs() if r["run_id"].startswith("nightly")}
        assert shards == {"nightly@shard-1-of-2": "shard", "nightly@shard-2-of-2": "shard"}
        whole = h.get("nightly")
        assert sorted(c.id for c in whole.load_cells(samples=False)) == ["mlp/torch/b1/t1/c1", "mlp/torch/b2/t1/c1"]
        assert whole.meta()["status"] == "complete"
    p = run_bench("compare", "nightly", "nightly", "--history", postgres_url, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0 and "over 2 cells (2 of the baseline's 2 valid cells)" in p.stdout, p.stdout + p.stderr
    # one shard's record gone: the run is not whole, so it is refused rather than compared in half
    with History.open(postgres_url) as h:
        h._exec("DELETE FROM cells WHERE run_id = ?", ("nightly@shard-2-of-2",))
        h._exec("DELETE FROM runs WHERE run_id = ?", ("nightly@shard-2-of-2",))
        h.conn.commit()
        with pytest.raises(UserError, match="has 1 of its 2 shards recorded"):
            h.get("nightly")
    p = run_bench("compare", "nightly", "nightly", "--history", postgres_url, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "1 of its 2 shards" in p.stderr, p.stdout + p.stderr
    # merged, the run keeps its own id and is whole again
    shard1, shard2 = tmp_path / "runner1" / "nightly", tmp_path / "runner2" / "nightly"
    p = run_bench("merge", str(tmp_path / "all"), str(shard1), str(shard2), "--history", postgres_url, "--no-report",
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    with History.open(postgres_url) as h:
        assert len(h.get("nightly").load_cells(samples=False)) == 2
    # a baseline that lacks a cell the new run measured fails the comparison, unless expected
    p = run_bench("compare", str(shard1), str(tmp_path / "all"), cwd=tmp_path)
    assert p.returncode == 1 and "MISSING FROM THE BASELINE (1)" in p.stdout, p.stdout + p.stderr
    assert "(1 of the baseline's 1 valid cells)" in p.stdout
    p = run_bench("compare", str(shard1), str(tmp_path / "all"), "--partial-baseline", cwd=tmp_path)
    assert p.returncode == 0 and "a partial baseline was expected" in p.stdout, p.stdout + p.stderr
