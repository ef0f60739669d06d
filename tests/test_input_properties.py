"""Property-based tests of the two readers of user input: whatever the text or config, the answer is a
parsed value or a UserError (one line, exit 2 at the CLI), never another exception."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from bench.config import MODEL_KEYS, PAYLOAD_SWEEP_KEYS, TOP_KEYS, RunConfig, build_config
from bench.measure import SamplingConfig
from fixtures.specs import INPUT_KINDS, SUPPORTED_DTYPES, parse_input_spec
from plumbing.errors import UserError

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- input specs ------------------------------------------------------------------------------------
_NUMBERS = st.one_of(
    st.sampled_from(["0", "1", "-1", "0.5", ".5", "1.", "1e3", "1e-3", "-2.5e+2", "1e999", "-1e999", "e", "-", "+",
                     "1.2.3", "1e", "..", "1..2", "-.", "9" * 400, "nan", "inf", "0x10", "١"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**70), 2**70).map(str),
)
_DIMS = st.one_of(st.sampled_from(["batch", "B", "n", "?", "-1", "0", "", " ", "x", "1.5", "²", "99999999999",
                                   "9" * 30]),
                  st.integers(1, 4096).map(str))


@st.composite
def _spec_parts(draw: st.DrawFn) -> str:
    """Text close to the grammar (name:dtype[dims]=low..high!kind), so most draws get past the first check."""
    name = draw(st.sampled_from(["x", "ids", "input_ids", "a.b-c", "_", "9x", "", "é"]))
    dtype = draw(st.sampled_from([*SUPPORTED_DTYPES, "float99", "", "str"]))
    dims = ",".join(draw(st.lists(_DIMS, min_size=0, max_size=4)))
    text = f"{name}:{dtype}[{dims}]"
    if draw(st.booleans()):
        text += f"={draw(_NUMBERS)}..{draw(_NUMBERS)}"
    if draw(st.booleans()):
        text += f"!{draw(st.sampled_from([*INPUT_KINDS, 'nope', '']))}"
    return text


_SPEC_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="xi:float32int64[]batch,0123456789=.-+eE!;_ ", max_size=80),
    st.lists(_spec_parts(), min_size=0, max_size=3).map("; ".join),
)


@PROPERTY
@given(_SPEC_TEXT)
def test_input_spec_parses_or_says_why(text: str):
    try:
        specs = parse_input_spec(text)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    for s in specs:
        assert all(d == "batch" or (isinstance(d, int) and d > 0) for d in s.shape)
        assert math.isfinite(s.low) and math.isfinite(s.high) and s.low < s.high
    # the full text (bounds and kind) parses back to the same specs; describe() to the same names, dtypes, shapes
    assert parse_input_spec("; ".join(s.spec_text() for s in specs)) == specs
    again = parse_input_spec("; ".join(s.describe() for s in specs))
    assert [(s.name, s.dtype, s.shape) for s in again] == [(s.name, s.dtype, s.shape) for s in specs]


@pytest.mark.parametrize("text", ["x:float32[batch,4]=1e999..5", "x:float32[batch,4]=e..5",
                                  "x:float32[batch,4]=1.2.3..5", "x:float32[batch,4]=-..1",
                                  "x:float32[batch,99999999999]", "x:int8[batch]=0..1000", "x:float32[batch,²]"])
def test_input_spec_bad_bounds_and_dims(text: str):
    with pytest.raises(UserError):
        parse_input_spec(text)


# -- config -----------------------------------------------------------------------------------------
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_SAMPLING_KEYS = [f.name for f in dataclasses.fields(SamplingConfig)]
_NUMBERISH = st.one_of(st.integers(-5, 100), st.floats(), st.integers(-(2**70), 2**70), _JSONISH)


def _plausible(key: str) -> st.SearchStrategy[Any]:
    """Values of roughly the right shape for one top-level key, to get past its first check."""
    names = {"models": ["mlp", "cnn", "transformer", "identity", "custom", "nope"],
             "strategies": ["torch", "onnxruntime", "grpc", "nope"], "malloc": ["default", "steady", "hoard"],
             "plugins": ["tests.plugins.faulty"]}
    if key in names:
        return st.lists(st.sampled_from(names[key]), max_size=3) | st.sampled_from(names[key])
    if key in ("batch_sizes", "threads", "concurrency"):
        return st.lists(st.integers(-2, 10**10), max_size=3) | st.text(alphabet="0123456789,x-", max_size=12)
    if key == "cpus":
        return st.text(alphabet="0123456789,-", max_size=16) | st.lists(st.integers(-1, 2**40), max_size=3)
    if key == "profile":
        return st.sampled_from(["default", "quick", "tails", "huge"])
    if key == "seed":
        return st.integers(-1, 2**70)
    if key == "sampling":
        return st.dictionaries(st.sampled_from([*_SAMPLING_KEYS, "max_time"]), _NUMBERISH, max_size=4)
    if key == "payload_sweep":
        return st.dictionaries(st.sampled_from([*PAYLOAD_SWEEP_KEYS, "size"]),
                               st.lists(st.sampled_from(["1KiB", "1MiB", "5GiB", "100B", 1024, 0, "x"]), max_size=3)
                               | _JSONISH, max_size=2)
    if key == "strategy":
        return st.dictionaries(st.sampled_from(["torch", "onnxruntime", "cpp-onnxruntime", "nope"]),
                               st.dictionaries(st.sampled_from(["variant", "spinning", "spinnin"]), _JSONISH, max_size=2),
                               max_size=2)
    if key == "model":
        inputs = st.one_of(st.sampled_from(["x:float32[batch,4]", "x:int64[batch,8]=0..50", "x:float32[4]", "bad"]),
                           st.lists(st.dictionaries(st.sampled_from(["name", "dtype", "shape", "low", "high", "kind", "shap"]),
                                                    _JSONISH, max_size=6), max_size=2))
        table = st.fixed_dictionaries({"name": st.sampled_from(["m", "mlp", "a/b"]) | _JSONISH,
                                       "factory": st.just("pkg.mod:make") | _JSONISH, "inputs": inputs},
                                      optional={k: _JSONISH for k in MODEL_KEYS - {"name", "factory", "inputs"}})
        return st.lists(table, max_size=2) | table | _JSONISH
    return _JSONISH


_CONFIGS = st.dictionaries(st.sampled_from(sorted(TOP_KEYS | {"modles"})), _JSONISH, max_size=6).flatmap(
    lambda d: st.fixed_dictionaries({k: st.one_of(_plausible(k), st.just(v)) for k, v in d.items()}))


@pytest.fixture(scope="module")
def strategy_names() -> list[str]:
    strategies.discover()
    return strategies.names()


@PROPERTY
@given(file_data=_CONFIGS, flags=st.dictionaries(st.sampled_from(["batch_sizes", "threads", "cpus", "models"]),
                                                 st.text(alphabet="0123456789,-mlp", max_size=10), max_size=2))
def test_config_builds_or_says_why(strategy_names: list[str], file_data: dict[str, Any], flags: dict[str, Any]):
    try:
        cfg = build_config(file_data, flags, strategy_names)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, RunConfig)
    assert cfg.batch_sizes and cfg.threads and cfg.concurrency  # models or strategies may be empty: the CLI says so
    s = cfg.sampling
    assert all(math.isfinite(getattr(s, f)) for f in _SAMPLING_KEYS)
    assert s.max_time_s > 0 and s.min_samples >= 1 and s.max_samples >= s.min_samples
    assert RunConfig.from_json(cfg.to_json()) == cfg  # what a resumed run reads back
