from __future__ import annotations

import numpy as np
import pytest

from fixtures.builtin import BUILTIN_MODELS
from fixtures.specs import ModelSpec, make_inputs, parse_input_spec
from plumbing.errors import UserError


def test_parse_input_spec_full_syntax():
    specs = parse_input_spec("ids:int64[batch,32]=0..1000; mask:int64[B,32]!padding_mask; img:float32[b,3,8,8]=-1..1")
    assert [s.name for s in specs] == ["ids", "mask", "img"]
    assert specs[0].shape == ("batch", 32) and (specs[0].low, specs[0].high) == (0, 1000)
    assert specs[1].kind == "padding_mask" and specs[1].shape == ("batch", 32)
    assert specs[2].concrete_shape(5) == (5, 3, 8, 8)


@pytest.mark.parametrize("bad,fragment", [
    ("x:float32", "malformed"), ("x:float99[batch,2]", "dtype"), ("x:float32[batch,0]", "bad dimension"),
    ("x:float32[batch,batch]", "one batch"), ("x:float32[batch,2]=3..1", "empty"), ("", "empty"),
    ("x:float32[batch,2]; x:int64[batch]", "repeat"), ("x:float32[batch,]", "empty dimension"),
])
def test_parse_input_spec_rejects(bad, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_input_spec(bad)


def test_inputs_are_deterministic_and_in_range():
    spec = BUILTIN_MODELS["transformer"]
    a, b = make_inputs(spec, 6, 0), make_inputs(spec, 6, 0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(make_inputs(spec, 6, 1)["input_ids"], a["input_ids"])
    ids, mask = a["input_ids"], a["attention_mask"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 1000
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    for row in mask:  # ones then zeros, at least half ones
        n = int(row.sum())
        assert n >= 16 and row[:n].all() and not row[n:].any()


def test_spec_json_round_trip():
    spec = BUILTIN_MODELS["transformer"]
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_identity_rows_are_one_kib():
    assert BUILTIN_MODELS["identity"].input_bytes(64) == 64 * 1024
