"""Variable shapes and the user's own requests (the ``shapes`` scenario): a model traced at one length
that is wrong at another is marked invalid while the routes that export a dynamic axis pass at every
length; recorded requests replay in order through every route with every output checked; bad request
files stop the run before it starts, in one line, exit 2; each length bucket is a row of its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.requests import bucket_edges, bucket_of, draw_sizes, load_request
from tests.conftest import run_bench

BUDGET = ["--warmup", "0.05", "--min-time", "0.2", "--max-time", "0.4", "--concurrency-time", "0.2"]
FROZEN = '''
models = ["transformer", "frozen"]
[[model]]
name = "frozen"
factory = "tests.byom_models:make_length_frozen"
inputs = "ids:int64[batch,seq]=0..100; seq=4..64@16"
'''


def test_lengths_are_drawn_within_the_range_from_the_seed():
    spec = BUILTIN_MODELS["transformer"]
    a, b = draw_sizes(spec, "lognormal", 200, 0), draw_sizes(spec, "lognormal", 200, 0)
    assert a == b and a != draw_sizes(spec, "lognormal", 200, 1)
    seqs = [d["seq"] for d in a]
    assert min(seqs) >= 8 and max(seqs) <= 128 and np.median(seqs) < 48  # short to middling, a tail of long ones
    assert {d["seq"] for d in draw_sizes(spec, "fixed", 5, 0)} == {32}
    assert bucket_edges(8, 128) == [8, 16, 32, 64, 129] and bucket_of(100, bucket_edges(8, 128)) == "64-128"


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    (out / "bench.toml").write_text(FROZEN)
    p = run_bench("run", "--config", str(out / "bench.toml"), "--scenarios", "shapes", "--strategies",
                  "torch,onnxruntime,cpp-onnxruntime,libtorch-ts", "--batch-sizes", "1", "--shape-requests", "12",
                  "--out", str(out), "--run-id", "s", *BUDGET, cwd=out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / "s"


def _cells(run: Path) -> dict[str, dict]:
    return {json.loads(f.read_text())["cell"]["id"]: json.loads(f.read_text()) for f in (run / "cells").glob("*.json")}


def test_a_model_traced_at_one_length_is_invalid_and_dynamic_exports_pass_at_every_length(shaped: Path):
    cells = _cells(shaped)
    frozen = cells["frozen/libtorch-ts/b1/t1/c1/shapes@lognormal"]
    assert frozen["status"] == "invalid", frozen.get("error")
    assert "request" in frozen["error"] and "seq=" in frozen["error"], frozen["error"]
    assert cells["frozen/torch/b1/t1/c1/shapes@lognormal"]["status"] == "ok"
    for s in ("torch", "onnxruntime", "cpp-onnxruntime", "libtorch-ts"):
        r = cells[f"transformer/{s}/b1/t1/c1/shapes@lognormal"]
        assert r["status"] == "ok", (s, r.get("error"))
        d = r["scenario_detail"]
        assert len(d["requests"]) == 12 and all(p["ok"] for p in d["requests"])
        assert len({p["length"] for p in d["requests"]}) > 4  # lengths really varied
        assert d["correctness"]["outputs"]["pooled"]["max_abs"] < 1e-3
    # the same requests, in the same order, through every route
    orders = {s: [p["sizes"]["seq"] for p in cells[f"transformer/{s}/b1/t1/c1/shapes@lognormal"]["scenario_detail"]["requests"]]
              for s in ("torch", "onnxruntime", "libtorch-ts")}
    assert len({tuple(v) for v in orders.values()}) == 1


def test_each_length_bucket_is_a_row_of_its_own_and_the_report_plots_latency_against_length(shaped: Path):
    with open(shaped / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    buckets = [r for r in rows if r["cell_id"].startswith("transformer/onnxruntime/b1/t1/c1/shapes@lognormal.seq")]
    assert len(buckets) >= 3, [r["cell_id"] for r in rows]
    assert all(float(r["p50_ms"]) > 0 for r in buckets)
    html = (shaped / "report.html").read_text()
    assert "latency against length" in html and "alt='shapes-transformer'" in html
    # compare judges each bucket apart: a run against itself has every bucket in common, none changed
    from bench.compare import compare_cells
    from bench.results import RunDir

    cells = RunDir(shaped).load_cells()
    changes, only_base, only_new = compare_cells(cells, cells)
    judged = {c.cell_id for c in changes}
    assert {r["cell_id"] for r in buckets} <= judged and not only_base and not only_new
    assert all(c.verdict == "unchanged" for c in changes)
    # the history keeps each bucket as a cell of its own, and reads back what the folder holds
    from bench.history import History

    with History.open(str(shaped.parent / "h.sqlite")) as h:
        h.record(RunDir(shaped))
        back = h.get("s").load_cells(samples=False)
    assert back == [r.without_samples() for r in cells]


def _write(folder: Path, name: str, **arrays: np.ndarray) -> Path:
    folder.mkdir(exist_ok=True)
    np.savez(folder / name, **arrays)
    return folder / name


def _ids(seq: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[:, seq - seq // 4:] = 0
    return {"input_ids": rng.integers(0, 1000, (batch, seq), dtype=np.int64), "attention_mask": mask}


def test_recorded_requests_replay_in_order_through_every_route_and_every_output_is_checked(tmp_path: Path):
    folder = tmp_path / "requests"
    for i, seq in enumerate([12, 100, 40, 8, 64]):
        _write(folder, f"r{i:02d}.npz", **_ids(seq, batch=2, seed=i))
    routes = ["torch", "onnxruntime", "cpp-onnxruntime", "openvino", "libtorch-aoti", "grpc", "clr-onnxruntime"]
    p = run_bench("run", "--models", "transformer", "--scenarios", "shapes", "--inputs", str(folder),
                  "--strategies", ",".join([*routes, "executorch"]), "--out", str(tmp_path), "--run-id", "r", *BUDGET,
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cells = _cells(tmp_path / "r")
    # ExecuTorch's XNNPACK lowering keeps one dynamic dimension (the batch): it says it cannot take these lengths
    et = cells["transformer/executorch/b2/t1/c1/shapes@replay"]
    assert et["status"] == "unsupported" and "seq fixed at 32" in et["error"], et.get("error")
    for s in routes:
        r = cells[f"transformer/{s}/b2/t1/c1/shapes@replay"]
        assert r["status"] == "ok", r.get("error")
        assert [q["sizes"]["seq"] for q in r["scenario_detail"]["requests"]] == [12, 100, 40, 8, 64]
        assert r["scenario_detail"]["correctness"]["requests"] == 5


@pytest.mark.parametrize("arrays, message", [
    ({"input_ids": np.zeros((1, 16), np.int64)}, "no array named 'attention_mask'"),
    ({**_ids(16), "input_ids": np.zeros((1, 16), np.int32)}, "'input_ids' is int32, the spec says int64"),
    ({**_ids(16), "input_ids": np.zeros((1, 16, 2), np.int64)}, "'input_ids' has 3 dimensions"),
    (_ids(500), "seq=500 (axis 1), outside its range 8..128"),
    ({"input_ids": np.zeros((1, 16), np.int64), "attention_mask": np.ones((1, 20), np.int64)}, "one request has one seq"),
    ({**_ids(16), "extra": np.zeros(3)}, "'extra' are not inputs"),
])
def test_a_bad_request_file_is_one_line_and_exit_2_before_any_cell_runs(tmp_path: Path, arrays: dict, message: str):
    folder = tmp_path / "requests"
    _write(folder, "a-good.npz", **_ids(16))
    bad = _write(folder, "b-bad.npz", **arrays)
    p = run_bench("run", "--models", "transformer", "--scenarios", "shapes", "--inputs", str(folder),
                  "--strategies", "torch", "--out", str(tmp_path), "--run-id", "x", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0] and message in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_a_pickled_request_is_refused_unread(tmp_path: Path):
    folder = tmp_path / "requests"
    _write(folder, "p.npz", input_ids=np.array([{"a": 1}], dtype=object), attention_mask=np.ones((1, 8), np.int64))
    with pytest.raises(Exception, match="holds Python objects .refused: nothing is unpickled."):
        load_request(folder / "p.npz", BUILTIN_MODELS["transformer"])


def test_a_request_claiming_terabytes_is_refused_from_its_header(tmp_path: Path):
    """A 250-byte file whose .npy header declares a [1, 2**40] array: refused before anything is allocated."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False, "shape": (1, 2**40)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("input_ids.npy", head.getvalue())
    with pytest.raises(Exception, match=r"declares shape \[1, 1099511627776\], more than 256 MiB"):
        load_request(tmp_path / "big.npz", BUILTIN_MODELS["transformer"])
