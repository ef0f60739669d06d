"""The drift plant's mechanics (its figures are tests/benchmarks/drift_plant.py's): a real-time spinner on the
CPU it names, gone when its block ends. The hook that starts it between rounds is tested with the rematch's
real workers (tests/test_rematch.py)."""

from __future__ import annotations

import os

import pytest

from tests.benchmarks.drift_plant import planted


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root")
def test_the_plant_runs_real_time_on_its_cpu_and_leaves_nothing():
    cpu = max(os.sched_getaffinity(0))
    with planted(cpu, limit_s=30) as proc:
        assert os.sched_getscheduler(proc.pid) == os.SCHED_FIFO
        assert os.sched_getaffinity(proc.pid) == {cpu}
    assert proc.poll() is not None  # killed with its block, not left spinning

