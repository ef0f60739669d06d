"""Where built artifacts live: ``.bench-cache/`` under the working directory, or $BENCH_CACHE_DIR."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_TMP = re.compile(r"\.tmp-(\d+)$")  # what a builder writes before renaming it into place: NAME.tmp-PID
TEMP_PREFIX = "interop-bench-"  # every temporary folder the harness or a strategy makes in the system's temp


def temp_dir(purpose: str) -> Path:
    """A new folder in the system's temp, named so that the next run removes it if this process dies
    before it does (``sweep_temp``)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{purpose}-", suffix=f".tmp-{os.getpid()}"))


def sweep_temp() -> list[Path]:
    """The temporary folders of processes of this harness that died."""
    import tempfile

    return sweep_stale(Path(tempfile.gettempdir()), depth=1, prefix=TEMP_PREFIX)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", ".bench-cache")).resolve()


def reference_path(ref_dir: Path | str, batch: int) -> Path:
    """Eager-torch reference outputs of one model at one batch size (.npz, written by the probe)."""
    return Path(ref_dir) / f"b{batch}.npz"


def sweep_stale(root: Path | None = None, depth: int = 3, prefix: str = "") -> list[Path]:
    """Remove the half-built artifacts (``*.tmp-PID``) of builders that died (a killed prepare, a
    kill -9 of the harness), up to ``depth`` levels below the cache. A live builder's are kept.
    ``prefix`` limits it to names that start so (in a shared folder such as the system's temp)."""
    root = Path(root) if root is not None else default_cache_dir()
    removed: list[Path] = []
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        below = []
        for d in level:
            try:
                entries = list(d.iterdir())
            except OSError:
                continue
            for p in entries:
                m = _TMP.search(p.name)
                if m and p.name.startswith(prefix) and not _alive(int(m.group(1))):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p)
                elif p.is_dir() and not p.is_symlink():
                    below.append(p)
        level = below
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
