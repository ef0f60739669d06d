"""Files written whole or not at all: a temp file in the same folder, fsynced, renamed over the target,
so a reader (or a run killed halfway) sees the old file or the new one, never half. JSON as the
harness writes it: NumPy scalars and arrays as numbers and lists, inf/nan as null."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# errors that mean a folder cannot take what is written to it (full, read-only, over a size limit):
# the run stops there, keeping what it has, instead of failing every cell after it
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM})
EX_CANNOT_WRITE = 75
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # a worker's exit status when it cannot even write that it could not write


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp's 0600 hides results from a CI reader)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # write()/fsync() name no file: name the one meant
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """inf/nan are not JSON: store them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def atomic_write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, dumps(obj, indent))
