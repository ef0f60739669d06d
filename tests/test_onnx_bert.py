"""On a BERT-style encoder built from a `transformers` config (what a team brings, not a toy), the
ONNX Runtime routes' selection tries every exporter, the TorchScript-based one and ORT's transformer
optimizer included, keeps the fastest correct variant, and the Python `onnxruntime` strategy on
those files gives eager torch's outputs. Figures (the chosen variant against the others and eager
torch, side by side) are in tests/benchmarks/onnx_variants.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strategies.base import ModelHandle, SessionOptions
from strategies.shared.onnx_export import LEVELS, export_into
from tests.conftest import CACHE, IN_CI, require_strategy


def require_transformers() -> None:
    """`transformers` is a test dependency: missing in CI fails, elsewhere skips with the fix."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        if IN_CI:
            pytest.fail("transformers must be installed in CI (a test dependency: pip install -e '.[test]')")
        pytest.skip("transformers is not installed (pip install transformers)")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelHandle, Path, dict]:
    require_strategy("onnxruntime")
    require_transformers()
    from tests.bert_models import bert_spec

    handle = ModelHandle(bert_spec(small=True), 0)
    d = tmp_path_factory.mktemp("ort-bert")
    return handle, d, export_into(handle, d, CACHE)


def test_every_bert_variant_is_timed_or_says_why_it_lost(bert):
    _, d, info = bert
    names = {v["variant"] for v in info["variants"]}
    assert {f"dynamo/{lvl}" for lvl in LEVELS} <= names, names
    timed = [v for v in info["variants"] if "score_s" in v]
    assert timed, info["variants"]
    best = min(timed, key=lambda v: v["score_s"])
    assert info["chosen"] == best["variant"] and info["level"] == best["level"] and "lost" not in best
    for v in info["variants"]:
        assert v is best or v.get("lost"), v
        if "score_s" in v:
            assert v["b1_s"] > 0 and v["b8_s"] > 0 and (d / v["file"]).is_file(), v
    assert (d / "model.onnx").stat().st_ino == (d / best["file"]).stat().st_ino


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo+ortopt"])
def test_the_other_exporters_made_a_file_or_say_why_not(bert, exporter):
    """The TorchScript-based exporter and ORT's transformer optimizer (over the dynamo export) each
    left a file tried at every level, or one line saying why there is none."""
    _, d, info = bert
    mine = [v for v in info["variants"] if v["variant"].partition("/")[0] == exporter]
    assert mine, f"{exporter} is missing from export.json: {[v['variant'] for v in info['variants']]}"
    with_file = [v for v in mine if "file" in v]
    # transformers' own tensor-to-bool conversions under tracing compare shapes, not values: they must
    # not cost BERT its TorchScript-based export (at seq 128, batch 8 it was the fastest correct file)
    assert with_file or exporter != "torchscript", mine
    if with_file:
        assert {v["level"] for v in with_file} == set(LEVELS)
        assert (d / with_file[0]["file"]).is_file()
        for v in with_file:
            assert "score_s" in v or v.get("lost"), v
    else:
        assert len(mine) == 1 and mine[0]["lost"].strip(), mine
        assert "\n" not in mine[0]["lost"]


def test_the_onnxruntime_strategy_gives_eager_torchs_outputs(bert):
    """The chosen file, and every other timed variant forced by the setting, against eager torch at a
    batch size the selection did not check."""
    from fixtures.loading import run_eager

    handle, d, info = bert
    spec = handle.spec
    x = handle.example_inputs(4)
    assert 0 < x["attention_mask"].sum() < x["attention_mask"].size  # padding really happens
    expected = run_eager(handle.build(), spec, x)
    s = require_strategy("onnxruntime")
    timed = [v["variant"] for v in info["variants"] if "score_s" in v]
    for variant in [None, *timed]:
        settings = {"variant": variant} if variant else {}
        with s.open(handle, d, SessionOptions(1, 1, settings)) as session:
            got = session.run(x)
            facts = session.describe()["per model"]
        assert facts["onnx variant"].startswith(variant or f"{info['chosen']} (fastest correct)"), facts
        assert set(got) == set(spec.outputs), got.keys()
        for k, e in expected.items():
            assert got[k].shape == e.shape, (variant, k)
            np.testing.assert_allclose(got[k], e, atol=spec.atol, rtol=spec.rtol, err_msg=f"{variant or 'chosen'}: {k}")
