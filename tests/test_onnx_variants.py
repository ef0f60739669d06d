"""The ONNX file every ONNX Runtime route runs is chosen as a careful team would: each exporter, each
optimization level, checked against eager torch and timed; the fastest correct one wins, the rest
are recorded with why they lost, and a setting can force another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.custom import make_custom_model
from fixtures.specs import parse_input_spec
from strategies.base import ModelHandle, SessionOptions
from strategies.shared.onnx_export import LEVELS, export_into, export_torchscript_based, variant_for
from tests.conftest import CACHE, require_strategy


@pytest.fixture(scope="module")
def transformer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    require_strategy("onnxruntime")
    d = tmp_path_factory.mktemp("ort-transformer")
    info = export_into(ModelHandle(BUILTIN_MODELS["transformer"], 0), d, CACHE)
    return d, info


def test_every_variant_is_timed_or_says_why_it_lost(transformer):
    d, info = transformer
    on_disk = json.loads((d / "export.json").read_text())
    assert on_disk == info
    names = {v["variant"] for v in info["variants"]}
    assert {f"dynamo/{lvl}" for lvl in LEVELS} <= names  # every level of the dynamo export was tried
    assert any(n.startswith("torchscript") for n in names) and any("+ortopt" in n for n in names)
    timed = [v for v in info["variants"] if "score_s" in v]
    assert timed, info["variants"]
    best = min(timed, key=lambda v: v["score_s"])
    assert info["chosen"] == best["variant"] and info["level"] == best["level"]
    assert "lost" not in best
    for v in info["variants"]:
        assert v is best or v.get("lost"), v  # each loser says why: slower by how much, or what failed
    assert (d / "model.onnx").stat().st_ino == (d / best["file"]).stat().st_ino
    assert info["nodes"] > 0 and info["opset"] >= 18 and info["main_ops"]


def test_a_setting_forces_a_variant_in_every_ort_route(transformer):
    d, info = transformer
    timed = [v for v in info["variants"] if "score_s" in v]
    forced = next(v for v in timed if v["variant"] != info["chosen"])
    path, level, _ = variant_for(d, forced["variant"])
    assert path == d / forced["file"] and level == forced["level"]
    spec = BUILTIN_MODELS["transformer"]
    for name in ("onnxruntime", "cpp-onnxruntime"):
        s = require_strategy(name)
        settings = {"variant": forced["variant"]}
        with s.open(ModelHandle(spec, 0), d, SessionOptions(1, 1, settings)) as session:
            facts = session.describe()["per model"]
            assert facts["onnx variant"].startswith(f"{forced['variant']} (forced by setting)"), facts
            assert session.run(ModelHandle(spec, 0).example_inputs(2))["pooled"].shape == (2, 64)
        with s.open(ModelHandle(spec, 0), d, SessionOptions(1)) as session:
            facts = session.describe()["per model"]
            assert facts["onnx variant"].startswith(f"{info['chosen']} (fastest correct)"), facts
            assert "main ops" in facts["onnx file"] and str(info["nodes"]) in facts["onnx file"]
            assert all(v["variant"] in facts["other variants (batch 1/8, 1 thread)"]
                       for v in info["variants"] if v["variant"] != info["chosen"])
        with pytest.raises(ValueError, match="not among this model's"):
            s.open(ModelHandle(spec, 0), d, SessionOptions(1, 1, {"variant": "nonsense/ALL"}))


def test_the_tracing_exporter_refuses_a_value_dependent_branch(tmp_path: Path):
    """torch.jit.trace would freeze `if x.sum() > 0` into one branch; the file must not be used."""
    spec = make_custom_model("dd", "tests.byom_models:make_data_dependent", parse_input_spec("x:float32[batch,4]"), ("y",))
    with pytest.raises(RuntimeError, match="may not generalise .*Python boolean"):
        export_torchscript_based(ModelHandle(spec, 0), tmp_path / "dd.onnx")
