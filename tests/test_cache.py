"""The artifact cache: a builder that died leaves NAME.tmp-PID behind; the next run removes it,
and leaves a live builder's alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plumbing.cache import sweep_stale


def test_half_built_artifacts_of_dead_builders_are_swept(tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    root = tmp_path / "cache"
    stale_dir = root / "artifacts" / "onnxruntime" / f"mlp-abc.tmp-{dead_pid}"
    stale_dir.mkdir(parents=True)
    (stale_dir / "model.onnx").write_bytes(b"half")
    stale_file = root / "cpp-onnxruntime" / "ort_runner_x" / f"ort_runner_x.so.tmp-{dead_pid}"
    stale_file.parent.mkdir(parents=True)
    stale_file.write_bytes(b"half")
    live = root / "onnx-export" / f"mlp-123.tmp-{os.getpid()}"
    live.mkdir(parents=True)
    done = root / "onnx-export" / "mlp-123"
    done.mkdir()
    removed = sweep_stale(root)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and done.exists() and (root / "artifacts" / "onnxruntime").exists()
    assert sweep_stale(tmp_path / "nowhere") == []


def test_temporary_folders_of_dead_processes_are_swept_and_no_one_elses():
    import tempfile

    from plumbing.cache import TEMP_PREFIX, sweep_temp, temp_dir

    mine = temp_dir("test")  # this process is alive: kept
    dead = subprocess.run([sys.executable, "-c", "from plumbing.cache import temp_dir; print(temp_dir('test'))"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    orphan = Path(dead.stdout.strip())
    foreign = Path(tempfile.mkdtemp(prefix="someone-else-", suffix=f".tmp-{dead_pid()}"))
    try:
        assert orphan.name.startswith(TEMP_PREFIX) and orphan.exists()
        removed = sweep_temp()
        assert orphan in removed and not orphan.exists()
        assert mine.exists() and foreign.exists()
    finally:
        for p in (mine, foreign):
            p.rmdir()


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
