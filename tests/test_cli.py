"""Bad input: one clear line on stderr, exit status 2, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import RunConfig
from tests.conftest import FAST, run_bench

SPEC = ["--model-factory", "tests.byom_models:make_two_inputs", "--model-inputs"]


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
    "bad flag": (["--frobnicate"], ["unrecognized arguments: --frobnicate", "`python -m bench run --help`"]),
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
    "nan max time": (["--max-time", "nan"], ["--max-time", "must be a finite number, got nan"]),
    "infinite max time": (["--max-time", "inf"], ["--max-time", "must be a finite number, got inf"]),
    "infinite warmup": (["--warmup", "inf"], ["--warmup", "finite number"]),
    "nan min time": (["--min-time", "nan"], ["--min-time", "finite number"]),
    "zero concurrency time": (["--concurrency-time", "0"], ["--concurrency-time", "must be > 0"]),
    "nan target ci": (["--target-ci", "nan"], ["--target-ci", "finite number"]),
    "huge cpu range": (["--cpus", "0-99999999999"], ["are not available to this process"]),
    "large cpu range": (["--cpus", "0-20000000"], ["are not available to this process"]),
    "absurd batch size": (["--batch-sizes", "1000000000"], ["batch_sizes must be <= 65536"]),
    "inputs of one call too large": ([*SPEC, "features:float32[batch,100000000]; ids:int64[batch,4]", "--batch-sizes", "64"],
                                     ["over the cap of 4GiB"]),
    "absurd payload": (["--payload-sizes", "64GiB"], ["over the cap of 4GiB"]),
    "absurd threads": (["--threads", "100000"], ["threads must be <= 1024"]),
    "spec bound overflows": ([*SPEC, "x:float32[batch,4]=1e999..5"], ["value bound '1e999'", "not a finite"]),
    "spec bound is a letter": ([*SPEC, "x:float32[batch,4]=e..5"], ["value bound 'e' is not a number"]),
    "spec bound with two dots": ([*SPEC, "x:float32[batch,4]=1.2.3..5"], ["value bound '1.2.3' is not a number"]),
    "spec bound is a sign": ([*SPEC, "x:float32[batch,4]=-..1"], ["value bound '-' is not a number"]),
    "spec range outside dtype": ([*SPEC, "x:int8[batch,4]=0..1000"], ["reaches outside what int8 holds"]),
    "spec dimension too large": ([*SPEC, "x:float32[batch,99999999999]"], ["bad dimension 99999999999"]),
    "run id climbs out": (["--run-id", "../x"], ["run id '../x' must be a plain name"]),
    "run id is absolute": (["--run-id", "/tmp/x"], ["run id '/tmp/x' must be a plain name"]),
    "run id has a separator": (["--run-id", "a/b"], ["must be a plain name"]),
    "run id is dot-dot": (["--run-id", ".."], ["must be a plain name"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_run_input_exits_2_with_one_line(case: str, tmp_path: Path):
    args, fragments = CASES[case]
    # the case's flags last: they win over FAST's budget (--max-time nan must not be overridden by FAST's)
    p = run_bench("run", *FAST, "--out", str(tmp_path / "results"), *args, cwd=tmp_path, timeout=120)
    _assert_user_error(p, *fragments)
    # nothing half-written: no results folder with a run in it
    assert not list((tmp_path / "results").glob("*/run.json")), "a failed start left a run folder behind"


@pytest.mark.parametrize("content,fragment", [
    ("models = [mlp", "not valid TOML"),
    ("modles = ['mlp']", "unknown keys ['modles']"),
    ("modles = ['mlp']", "did you mean 'models'?"),
    ("[sampling]\nmax_time = 3", "[sampling] has unknown keys ['max_time']"),
    ("[sampling]\nmax_time = 3", "did you mean 'max_time_s'?"),
    ("[sampling]\nmax_time_s = inf", "sampling.max_time_s (--max-time) must be a finite number, got inf"),
    ("[sampling]\nwarmup_s = nan", "sampling.warmup_s (--warmup) must be a finite number, got nan"),
    ("[sampling]\nround_s = 0", "sampling.round_s must be > 0"),
    ("[sampling]\nmax_samples = 0", "sampling.max_samples must be >= 1"),
    ("[sampling]\nmin_samples = 0", "sampling.min_samples must be >= 1"),
    ("[sampling]\nwarmup_calls = 2.5", "sampling.warmup_calls must be an integer"),
    ("[sampling]\nmin_samples = 500\nmax_samples = 100", "max_samples must be >= sampling.min_samples"),
    ("[payload_sweep]\nsize = ['1KiB']", "did you mean 'sizes'?"),
    ("[[model]]\nname = 'm'\nfactory = 'a:b'\ninputs = [{name = 'x', dtype = 'float32', shap = ['batch']}]",
     "did you mean 'shape'?"),
    ("[[model]]\nname = 'm'\nfactory = 'a:b'\ninputs = [{name = 'x', dtype = 'float32', shape = ['batch'], high = inf}]",
     "not a finite number"),
    ("cpus = '0-99999999999'", "are not available to this process"),
    ("[[model]]\nname = 'm'\nfactory = 'tests.byom_models:make_two_inputs'", "missing 'inputs'"),
    ("batch_sizes = 'many'", "batch_sizes"),
    ("[strategy.nope]\nx = 1", "[strategy.nope]: unknown strategy"),
    ("malloc = 'hoard'", "malloc must be one of default, steady, jemalloc, tcmalloc"),
    ("[strategy.onnxruntime]\nspinnin = true", "did you mean 'spinning'?"),
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
                 "input_ids:int64[batch,seq], attention_mask:int64[batch,seq]", "seq=8..128", "quick"):
        assert word in p.stdout
    p = run_bench("list", "--plugin", "tests.plugins.faulty", cwd=tmp_path)
    assert "crash-test" in p.stdout
    _assert_user_error(run_bench("list", "--plugin", "tests.plugins.nope", cwd=tmp_path), "cannot be imported")


def test_usage_hint_names_the_command(tmp_path: Path):
    line = _assert_user_error(run_bench("frobnicate", cwd=tmp_path), "invalid choice")
    assert "`python -m bench --help`" in line and "bench bench" not in line


def test_unknown_strategy_setting_names_the_nearest(monkeypatch: pytest.MonkeyPatch):
    """A strategy that declares ``settings_keys`` refuses others; one that does not is not checked."""
    import strategies
    from bench.config import build_config
    from plumbing.errors import UserError

    strategies.discover()
    ort = type(strategies.get("onnxruntime"))
    monkeypatch.setattr(ort, "settings_keys", ("spinning",), raising=False)
    with pytest.raises(UserError, match=r"\[strategy.onnxruntime\] has unknown keys \['spinnin'\]; did you mean 'spinning'\?"):
        build_config({"strategy": {"onnxruntime": {"spinnin": True}}}, {}, strategies.names())
    cfg = build_config({"strategy": {"onnxruntime": {"spinning": False, "variant": "dynamo/ALL"}}}, {}, strategies.names())
    assert cfg.strategy_settings["onnxruntime"] == {"spinning": False, "variant": "dynamo/ALL"}  # variant: its flag's key
    monkeypatch.setattr(type(strategies.get("torch")), "settings_keys", (), raising=False)
    with pytest.raises(UserError, match="takes no settings"):
        build_config({"strategy": {"torch": {"threads": 2}}}, {}, strategies.names())
    monkeypatch.delattr(ort, "settings_keys")
    if getattr(ort, "settings_keys", None) is None:
        build_config({"strategy": {"onnxruntime": {"anything": 1}}}, {}, strategies.names())


def _fake_run(folder: Path, **config) -> Path:
    """A results folder with a run.json and no cells: enough for compare and --resume to read."""
    (folder / "cells").mkdir(parents=True)
    cfg = RunConfig(**config)
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "status": "interrupted",
                                                 "config": cfg.to_json(), "environment": {}, "cells": []}))
    return folder


def test_compare_with_nothing_in_common_exits_2(tmp_path: Path):
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
    _assert_user_error(run_bench("compare", str(a), str(b), cwd=tmp_path), "no validly measured cell in common")


def test_run_with_no_valid_cell_exits_1(tmp_path: Path):
    p = run_bench("run", "--plugin", "tests.plugins.faulty", "--models", "mlp", "--strategies", "wrong-test",
                  "--batch-sizes", "1", "--concurrency", "1", "--payload-sizes", "none", "--no-report", "--no-history",
                  "--out", str(tmp_path), "--run-id", "w", *FAST, cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: no cell of run w was measured validly (1 invalid); see {tmp_path / 'w'}"], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "w" / ".lock").exists(), "the run's lock outlived it"


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


def test_resume_refuses_a_run_another_process_holds(tmp_path: Path):
    run = _fake_run(tmp_path / "r", models=[], payload_sizes=[])
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _assert_user_error(run_bench("run", "--resume", str(run), cwd=tmp_path), f"in use by process {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder died: its lock went with it, and the stale file (a dead PID) is taken over
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    _assert_user_error(run_bench("run", "--resume", str(run), cwd=tmp_path), "the matrix is empty")
    assert not (run / ".lock").exists(), "the lock outlived its run"


def test_stale_lock_file_is_taken_over(tmp_path: Path):
    run = _fake_run(tmp_path / "r", models=[], payload_sizes=[])
    (run / ".lock").write_text(f"{2**22 + os.getpid()}\n")  # a PID no process holds the lock as
    _assert_user_error(run_bench("run", "--resume", str(run), cwd=tmp_path), "the matrix is empty")
