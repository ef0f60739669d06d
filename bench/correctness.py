"""Outputs against eager torch: names, shapes, dtypes, and max abs/rel error within tolerance."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def compare_outputs(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], atol: float, rtol: float
) -> dict:
    """``ok`` when every expected output is present with the same shape and dtype and
    ``|a - e| <= atol + rtol * |e|`` elementwise (numpy.allclose's rule); NaN never matches."""
    outputs: dict[str, dict] = {}
    problems: list[str] = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing:
        problems.append(f"missing outputs {missing}")
    if extra:
        problems.append(f"unexpected outputs {extra}")
    for name in expected:
        if name not in actual:
            continue
        a = np.asarray(actual[name])
        e = np.asarray(expected[name])
        rec: dict = {"shape": list(a.shape), "dtype": str(a.dtype)}
        if a.shape != e.shape:
            problems.append(f"{name}: shape {a.shape} != expected {e.shape}")
            rec["ok"] = False
            outputs[name] = rec
            continue
        if a.dtype != e.dtype:
            problems.append(f"{name}: dtype {a.dtype} != expected {e.dtype}")
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        diff = np.abs(a64 - e64)
        finite = np.isfinite(a64) == np.isfinite(e64)
        rec["max_abs"] = float(np.nanmax(diff)) if diff.size else 0.0
        rel = diff / np.maximum(np.abs(e64), np.finfo(np.float64).tiny)
        rec["max_rel"] = float(np.nanmax(np.where(e64 == 0, np.where(diff == 0, 0.0, np.inf), rel))) if diff.size else 0.0
        close = bool(np.all(finite) and np.allclose(a64, e64, atol=atol, rtol=rtol, equal_nan=False))
        if diff.size:  # the element nearest to (or furthest past) its own tolerance atol + rtol*|expected|
            allowed = atol + rtol * np.abs(e64)
            used = np.where(a64 == e64, 0.0,  # equal, infinities included (inf - inf is nan)
                            np.where(np.isfinite(diff), diff / np.maximum(allowed, np.finfo(np.float64).tiny), np.inf))
            i = int(np.argmax(used))
            rec["worst"] = {"error": float(diff.flat[i]), "allowed": float(allowed.flat[i]),
                            "used": float(used.flat[i]), "index": [int(v) for v in np.unravel_index(i, diff.shape)]}
        if not close:
            w = rec.get("worst", {})
            problems.append(f"{name}: element {tuple(w.get('index', []))} is off by {w.get('error', float('nan')):.3g}, "
                            f"allowed {w.get('allowed', float('nan')):.3g} (atol {atol:g} + rtol {rtol:g} x |expected|)")
        rec["ok"] = close and a.dtype == e.dtype
        outputs[name] = rec
    return {"ok": not problems, "atol": atol, "rtol": rtol, "outputs": outputs, "problems": problems}


def worst(*checks: dict) -> dict:
    """Merge several checks of the same cell (first call, last call): failing beats passing."""
    bad = [c for c in checks if not c["ok"]]
    return bad[0] if bad else max(checks, key=lambda c: max((o.get("max_abs", 0.0) for o in c["outputs"].values()), default=0.0))
