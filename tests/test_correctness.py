from __future__ import annotations

import numpy as np

from bench.correctness import compare_outputs, worst

REF = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), "z": np.array([1, 2], dtype=np.int64)}


def test_exact_and_within_tolerance_pass():
    assert compare_outputs(REF, REF, 0, 0)["ok"]
    close = {"y": REF["y"] + 1e-6, "z": REF["z"]}
    r = compare_outputs(close, REF, 1e-5, 0)
    assert r["ok"] and 0 < r["outputs"]["y"]["max_abs"] < 1e-5


def test_value_shape_dtype_name_and_nan_failures():
    assert not compare_outputs({"y": REF["y"] + 0.1, "z": REF["z"]}, REF, 1e-4, 1e-3)["ok"]
    assert "shape" in compare_outputs({"y": REF["y"].T[:1], "z": REF["z"]}, REF, 1, 1)["problems"][0]
    assert "dtype" in compare_outputs({"y": REF["y"].astype(np.float64), "z": REF["z"]}, REF, 1, 1)["problems"][0]
    assert "missing" in compare_outputs({"y": REF["y"]}, REF, 1, 1)["problems"][0]
    nan = REF["y"].copy()
    nan[0, 0] = np.nan
    assert not compare_outputs({"y": nan, "z": REF["z"]}, REF, 1e9, 1e9)["ok"]


def test_worst_prefers_failure():
    good = compare_outputs(REF, REF, 0, 0)
    bad = compare_outputs({"y": REF["y"] + 1, "z": REF["z"]}, REF, 0, 0)
    assert worst(good, bad) is bad and worst(good, good)["ok"]
