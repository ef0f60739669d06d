"""The reviewer's constraints for the decision ([decision] in the config, or flags): the caller
language, Python at deployment, a memory budget, a p99 budget, the tie margin. Validated here, with
the rest of the config; reports.decision applies them."""

from __future__ import annotations

import math
from typing import Any

from plumbing.errors import UserError

LANGUAGES = ("python", "csharp", "cpp")
DEFAULT_TIE_WITHIN = 0.05
KEYS = ("caller", "python_at_deployment", "memory_budget_mb", "p99_budget_ms", "tie_within", "required_rate_rps",
        "rematch_rounds")


def check_constraints(d: dict[str, Any]) -> dict[str, Any]:
    """Validate a [decision] table (or the flags' values); returns it normalised. UserError on bad input."""
    from bench.config import unknown_keys

    unknown_keys("[decision]", d, KEYS)
    out: dict[str, Any] = {}
    caller = d.get("caller")
    if caller not in (None, "", "any"):
        if caller not in LANGUAGES:
            raise UserError(f"caller must be one of {', '.join(LANGUAGES)} or any, not {caller!r}")
        out["caller"] = caller
    pad = d.get("python_at_deployment")
    if pad is not None:
        if isinstance(pad, str):
            if pad.lower() not in ("yes", "no", "true", "false"):
                raise UserError(f"python_at_deployment must be yes or no, not {pad!r}")
            pad = pad.lower() in ("yes", "true")
        if not isinstance(pad, bool):
            raise UserError(f"python_at_deployment must be yes or no, not {pad!r}")
        out["python_at_deployment"] = pad
    for key, parse in (("memory_budget_mb", parse_mib), ("p99_budget_ms", parse_ms)):
        if d.get(key) is not None:
            out[key] = parse(d[key], key)
    if d.get("required_rate_rps") is not None:  # requests/s the route must hold within the slo scenario's p99 budget
        out["required_rate_rps"] = _number(d["required_rate_rps"], "required_rate_rps", {"": 1.0, "/s": 1.0, "rps": 1.0},
                                           "300 or '300rps'")
    if d.get("rematch_rounds") is not None:  # bench.rematch: 0 turns it off
        v = d["rematch_rounds"]
        try:
            n = int(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else -1
        except ValueError:
            n = -1
        if not 0 <= n <= 1000 or (n != 0 and n < 3):
            raise UserError(f"rematch_rounds must be 0 (off) or a whole number from 3 to 1000, not {v!r}")
        out["rematch_rounds"] = n
    if d.get("tie_within") is not None:
        v = d["tie_within"]
        if isinstance(v, str):
            try:
                v = float(v[:-1]) / 100 if v.endswith("%") else float(v)
            except ValueError:
                raise UserError(f"tie_within must be a fraction in [0, 1), e.g. 0.05 or 5%, not {d['tie_within']!r}") from None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1 or not math.isfinite(v):
            raise UserError(f"tie_within must be a fraction in [0, 1), e.g. 0.05 or 5%, not {d['tie_within']!r}")
        out["tie_within"] = float(v)
    return out


def _number(value: Any, key: str, units: dict[str, float], example: str) -> float:
    import re

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-zµ]*)\s*", str(value)[:40])
        if not m or m[2].lower() not in units:
            raise UserError(f"{key}: {str(value)[:40]!r} is not a value like {example}")
        v = float(m[1]) * units[m[2].lower()]
    if not math.isfinite(v) or v <= 0:
        raise UserError(f"{key} must be a positive number, not {value!r}")
    return v


def parse_ms(value: Any, key: str = "p99 budget") -> float:
    return _number(value, key, {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}, "'10ms', '500us' or '0.2s'")


def parse_mib(value: Any, key: str = "memory budget") -> float:
    return _number(value, key, {"": 1.0, "mb": 1e6 / 2**20, "mib": 1.0, "gb": 1e9 / 2**20, "gib": 1024.0},
                   "'500MB', '1.5GiB' or a number of MiB")
