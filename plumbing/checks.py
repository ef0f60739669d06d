"""Checks of values a user gave (a config file, a flag): each returns the clean value or raises
UserError with one line that names the key."""

from __future__ import annotations

import math
from typing import Any

from plumbing.errors import UserError


def finite_number(x: Any) -> bool:
    """A real number: an int (not a bool) within 64 bits, as TOML has them, or a finite float."""
    return (isinstance(x, int) and not isinstance(x, bool) and abs(x) < 2**63
            or isinstance(x, float) and math.isfinite(x))


def name_list(key: str, value: Any) -> list[str]:
    """A list of names, or one comma-separated string of them; duplicates dropped, order kept."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{key} must be a list of names, got {value!r}")
    return list(dict.fromkeys(value))
