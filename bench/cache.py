"""Where built artifacts live: ``.bench-cache/`` under the working directory, or $BENCH_CACHE_DIR."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", ".bench-cache")).resolve()


def reference_path(ref_dir: Path | str, batch: int) -> Path:
    """Eager-torch reference outputs of one model at one batch size (.npz, written by the probe)."""
    return Path(ref_dir) / f"b{batch}.npz"
