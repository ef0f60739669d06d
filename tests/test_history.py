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
from bench.processes import die_with_parent
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
    return {r["run_id"]: {c["cell"]["id"]: (c["status"], (c.get("latency") or {}).get("p50"))
                          for c in h.cells(r["run_id"], samples=False)} for r in h.runs()}


def test_runs_are_recorded_in_sqlite_by_default(runs: Path, tmp_path: Path):
    p = run_bench("history", "--out", str(runs), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "3 runs in" in p.stdout and all(r in p.stdout for r in RUNS)
    with History.open(str(runs / "history.sqlite")) as h:
        assert [r["run_id"] for r in h.runs()] == list(RUNS)
        slow = h.get("slow")
        assert slow is not None and len(slow.load_cells()) == 4 and slow.load_cells()[0]["samples_ns"]


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
        assert pg.get("slow").load_cells()[0]["samples_ns"] == lite.get("slow").load_cells()[0]["samples_ns"]
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
    from bench.errors import UserError
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
        assert sorted(c["cell"]["id"] for c in whole.load_cells(samples=False)) == ["mlp/torch/b1/t1/c1", "mlp/torch/b2/t1/c1"]
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
