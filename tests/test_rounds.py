"""Interleaved rounds (bench.rounds): who is alive together, how a cell pools its processes, and real runs in
which every route of a group is measured side by side; a worker that dies is replaced once, one that keeps
dying fails only its own cells, and --resume picks up inside a group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.record import Cell, Status
from bench.results import RunDir
from bench.rounds import Partial, Plan, pool, spread
from tests.conftest import run_bench

ROUTES = ["torch", "a", "b", "c", "d"]
QUICK = ["--warmup", "0.02", "--rounds", "4", "--turn", "0.03", "--payload-sizes", "none", "--concurrency", "1",
         "--scenarios", "latency"]


def test_a_group_within_the_bound_is_one_wave_and_past_it_waves_then_sets_that_all_hold_the_reference():
    one = Plan.of(ROUTES, 2, 40, 12)
    assert len(one.waves) == 1 and sorted(one.waves[0]) == sorted((r, k) for r in ROUTES for k in (0, 1))
    assert one.rounds == [12] and one.alive_at_most == 10
    waves = Plan.of(ROUTES, 2, 6, 12)  # two processes of five routes do not fit in six: one process each, twice
    assert [sorted({k for _, k in w}) for w in waves.waves] == [[0], [1]] and waves.rounds == [6, 6]
    sets = Plan.of(ROUTES, 1, 3, 12)  # five routes in threes: every set holds the reference, so each ratio to it is paired
    assert all(w[0] == ("torch", 0) for w in sets.waves) and {r for w in sets.waves for r, _ in w} == set(ROUTES)
    assert sets.alive_at_most <= 3


def _part(samples: list[int], ok: bool = True, peak: int = 100) -> Partial:
    return Partial(samples, len(samples), float(sorted(samples)[len(samples) // 2]), sum(samples), {}, 0.01, {"worker": 0.01},
                   {"baseline_rss": 10, "steady_rss": 50, "peak_rss": 60, "added_steady": 40, "added_peak": peak,
                    "processes": [], "extra": {}},
                   {"ok": ok, "max_abs": 0.0, "max_rel": 0.0, "problems": [] if ok else ["y: off by 0.5"]},
                   {}, 64, 0.002, 5, 0.5)


def test_a_cell_pools_its_processes_and_its_interval_covers_each_process_median():
    fast, slow = _part([1000 + i for i in range(200)]), _part([1100 + i for i in range(200)])
    r = pool(Cell("mlp", "torch", 1, 1, 1), [fast, slow], {"open_s": 0.1, "cold_start_phases": {"open": 0.1}}, 12, 0.1, 2)
    assert r.status is Status.OK and r.latency.n == 400 and r.cpu.calls == 400
    assert r.latency.ci_low <= 1.1e-6 and r.latency.ci_high >= 1.199e-6  # both process medians inside
    assert r.sampling["processes"] == 2 and r.sampling["process_spread"] == pytest.approx(spread([1.1e-6, 1.2e-6]))
    assert r.cold_start_s == pytest.approx(0.102) and r.cold_start_phases["first call"] == 0.002
    wrong = pool(Cell("mlp", "torch", 1, 1, 1), [fast, _part([1000] * 50, ok=False)], {}, 12, 0.1, 2)
    assert wrong.status is Status.INVALID and "off by 0.5" in wrong.error  # one wrong process makes the cell wrong
    assert spread([1.0]) is None


def _run(tmp: Path, *extra: str, config: str = "") -> Path:
    cfg = tmp / "bench.toml"
    cfg.write_text(config)
    p = run_bench("run", "--config", str(cfg), "--plugin", "tests.plugins.faulty", "--models", "mlp",
                  "--batch-sizes", "1,2", "--out", str(tmp), "--run-id", "r", *QUICK, *extra, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    (tmp / "stderr.txt").write_text(p.stderr)
    return tmp / "r"


def test_every_route_of_a_group_is_measured_in_every_round_and_a_dead_worker_is_replaced_once(tmp_path: Path):
    once = tmp_path / "crashed-once"
    run = _run(tmp_path, "--strategies", "torch,torch-twin-test,crash-test",
               config=f'[strategy.crash-test]\nafter_calls = 1\nonce_file = "{once}"\n')
    cells = RunDir(run).load_cells(samples=False)
    assert len(cells) == 6 and all(c.status is Status.OK for c in cells), [(c.id, c.error) for c in cells]
    for c in cells:
        assert c.sampling["method"] == "rounds" and c.sampling["processes"] == 2, c.sampling
        assert c.latency.ci_low <= min(c.sampling["process_p50_s"]) <= max(c.sampling["process_p50_s"]) <= c.latency.ci_high
        assert c.cold_start_s and c.memory.added_peak and c.cpu.calls
    rounds = json.loads((run / "rounds.json").read_text())
    assert {g["batch"] for g in rounds["groups"]} == {1, 2}
    for g in rounds["groups"]:
        assert len(g["medians_ns"]) == 4 and all(set(r) == {"torch", "torch-twin-test", "crash-test"} for r in g["medians_ns"])
    assert once.exists() and "crash-test: its worker died opening" in (tmp_path / "stderr.txt").read_text()
    d = json.loads((run / "decision.json").read_text())
    python = next(b for b in d["blocks"] if b["caller"] == "python")["cells"][0]
    assert all(r["paired_rounds"] for r in python["eligible"][1:])  # every route paired with the first, side by side
    assert "interleaved rounds" in (run / "report.md").read_text()


def test_a_route_whose_workers_keep_dying_fails_only_its_own_cells_and_resume_picks_up_inside_the_group(tmp_path: Path):
    run = _run(tmp_path, "--strategies", "torch,crash-test", config="[strategy.crash-test]\nafter_calls = 1\n")
    cells = {c.cell.strategy + str(c.cell.batch): c for c in RunDir(run).load_cells(samples=False)}
    assert cells["torch1"].ok and cells["torch2"].ok
    assert cells["crash-test1"].status is Status.ERROR and "SIGKILL" in cells["crash-test1"].error
    assert not list((run / ".work").glob("*.json")) if (run / ".work").exists() else True  # no job file left
    # a cell measured again inside its group: only it runs, and its group's rounds grow
    (run / "cells" / next(p.name for p in (run / "cells").glob("*torch*b2*"))).unlink()
    p = run_bench("run", "--resume", str(run), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\n1 cells run (1 ok), 3 kept from before" in p.stderr, p.stderr[-1500:]
    again = {c.id: c for c in RunDir(run).load_cells(samples=False)}
    assert again["mlp/torch/b2/t1/c1"].ok and len(again) == 4
    b2 = next(g for g in json.loads((run / "rounds.json").read_text())["groups"] if g["batch"] == 2)
    assert len(b2["medians_ns"]) == 8 and set(b2["medians_ns"][-1]) == {"torch"}


def test_rounds_zero_measures_each_cell_alone_as_before(tmp_path: Path):
    run = _run(tmp_path, "--strategies", "torch", "--rounds", "0", "--min-time", "0.05", "--max-time", "0.1")
    cells = RunDir(run).load_cells(samples=False)
    assert cells and all(c.ok and c.sampling.get("method") != "rounds" for c in cells)
    assert not (run / "rounds.json").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--rounds", "2.5", "--rounds) must be an integer"),
    ("--processes", "0", "--processes"),
    ("--turn", "-1", "--turn"),
])
def test_a_wrong_rounds_flag_is_one_line_and_exit_2(tmp_path: Path, flag: str, value: str, message: str):
    p = run_bench("run", "--models", "mlp", "--strategies", "torch", flag, value, "--out", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
