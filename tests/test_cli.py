"""Bad input: one clear line on stderr, exit status 2, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FAST, run_bench


def _assert_user_error(p, *fragments: str) -> str:
    assert p.returncode == 2, f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, got:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in errors[0], f"{f!r} not in {errors[0]!r}"
    return errors[0]


CASES = {
    "unknown model": (["--models", "resnet9000"], ["unknown model 'resnet9000'", "mlp", "transformer"]),
    "unknown strategy": (["--strategies", "torch,tensorrt"], ["unknown strategy 'tensorrt'", "onnxruntime"]),
    "unknown profile": (["--profile", "huge"], ["unknown profile 'huge'", "quick"]),
    "bad batch sizes": (["--batch-sizes", "1,x"], ["batch_sizes"]),
    "zero threads": (["--threads", "0"], ["threads must be >= 1"]),
    "bad payload": (["--payload-sizes", "100B"], ["multiple of 1024"]),
    "bad flag": (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    "bad onnx variant": (["--strategies", "onnxruntime", "--onnx-variant", "dynamo/FAST"],
                         ["ONNX variant 'dynamo/FAST'", "BASIC, EXTENDED, ALL"]),
    "factory without inputs": (["--model-factory", "tests.byom_models:make_two_inputs"], ["go together"]),
    "malformed input spec": (["--model-factory", "x:y", "--model-inputs", "x:float32(batch)"], ["malformed"]),
    "factory does not import": (["--model-factory", "no_such_pkg.models:make", "--model-inputs", "x:float32[batch,4]"],
                                ["cannot be imported", "No module named 'no_such_pkg'"]),
    "factory attribute missing": (["--model-factory", "tests.byom_models:nope", "--model-inputs", "x:float32[batch,4]"],
                                  ["has no attribute 'nope'"]),
    "factory returns non-module": (["--model-factory", "tests.byom_models:make_not_a_module", "--model-inputs",
                                    "x:float32[batch,4]"], ["not a torch.nn.Module"]),
    "input spec does not fit": (["--model-factory", "tests.byom_models:make_two_inputs", "--model-inputs",
                                 "features:float32[batch,5]; ids:int64[batch,4]=0..50"],
                                ["does not fit model 'custom'", "features:float32[batch,5]", "mat1 and mat2 shapes"]),
    "missing resume": (["--resume", "no-such-run"], ["no results folder"]),
    "unknown cpu": (["--cpus", "4096"], ["cpus [4096] are not available"]),
    "malformed cpus": (["--cpus", "3-1"], ["not a CPU number or range"]),
    "fewer cpus than threads": (["--cpus", "0", "--threads", "2"], ["threads 2 need at least that many CPUs"]),
    "unknown allocator policy": (["--malloc", "default,mimalloc"], ["malloc must be one of", "jemalloc", "'mimalloc'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_run_input_exits_2_with_one_line(case: str, tmp_path: Path):
    args, fragments = CASES[case]
    p = run_bench("run", *args, "--out", str(tmp_path / "results"), *FAST, cwd=tmp_path)
    _assert_user_error(p, *fragments)
    # nothing half-written: no results folder with a run in it
    assert not list((tmp_path / "results").glob("*/run.json")), "a failed start left a run folder behind"


@pytest.mark.parametrize("content,fragment", [
    ("models = [mlp", "not valid TOML"),
    ("modles = ['mlp']", "unknown keys ['modles']"),
    ("[sampling]\nmax_time = 3", "[sampling] has unknown keys ['max_time']"),
    ("[[model]]\nname = 'm'\nfactory = 'tests.byom_models:make_two_inputs'", "missing 'inputs'"),
    ("batch_sizes = 'many'", "batch_sizes"),
    ("[strategy.nope]\nx = 1", "[strategy.nope]: unknown strategy"),
    ("malloc = 'hoard'", "malloc must be one of default, steady, jemalloc, tcmalloc"),
])
def test_malformed_config_exits_2(tmp_path: Path, content: str, fragment: str):
    cfg = tmp_path / "bench.toml"
    cfg.write_text(content)
    p = run_bench("run", "--config", str(cfg), "--out", str(tmp_path / "results"), cwd=tmp_path)
    _assert_user_error(p, fragment)


def test_missing_config_file(tmp_path: Path):
    _assert_user_error(run_bench("run", "--config", "nope.toml", cwd=tmp_path), "does not exist")


def test_report_without_runs(tmp_path: Path):
    _assert_user_error(run_bench("report", "--out", str(tmp_path), cwd=tmp_path), "no runs under")
    _assert_user_error(run_bench("report", "nowhere", cwd=tmp_path), "no results folder")


def test_resume_refuses_new_matrix(tmp_path: Path, quick_run: Path):
    _assert_user_error(run_bench("run", "--resume", str(quick_run), "--models", "cnn", cwd=tmp_path),
                       "--resume reuses the run's own matrix")


def test_list_shows_strategies_with_availability_and_models(tmp_path: Path):
    p = run_bench("list", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for word in ("torch", "onnxruntime", "available", "identity", "mlp", "cnn", "transformer",
                 "input_ids:int64[batch,32]", "quick"):
        assert word in p.stdout
    p = run_bench("list", "--plugin", "tests.plugins.faulty", cwd=tmp_path)
    assert "crash-test" in p.stdout
    _assert_user_error(run_bench("list", "--plugin", "tests.plugins.nope", cwd=tmp_path), "cannot be imported")
