"""Where built artifacts live: ``.bench-cache/`` under the working directory, or $BENCH_CACHE_DIR."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", ".bench-cache")).resolve()
