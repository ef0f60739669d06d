"""The allocator policy a run gives its cells: counted in page faults (the OS's own accounting),
not in time, so the test says what the policy does on any machine, busy or not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import allocator
from bench.runner import worker_env
from tests.conftest import IN_CI

# Two 16 MiB buffers at a time, freed together: under glibc as shipped the freed top of the heap
# passes the trim threshold and is returned to the OS, so the next pair faults every page in again.
CHURN = """
import json, resource, sys
{setup}
n = 16 * 2**20
def churn(k):
    for _ in range(k):
        a = bytearray(n); b = bytearray(n); del a, b
churn(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(10)
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (10 * 2 * n / 4096)))
"""


def faults_per_page(env: dict[str, str], setup: str = "") -> float:
    p = subprocess.run([sys.executable, "-c", CHURN.format(setup=setup)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_steady_policy_reuses_freed_memory_where_glibc_as_shipped_faults_it_in_again():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's policy; other platforms have other allocators")
    default = faults_per_page(worker_env(1, "default"))
    steady = faults_per_page(worker_env(1, "steady"))
    assert default > 0.5, f"glibc as shipped faulted only {default:.2f} of the pages in; the churn no longer shows it"
    assert steady < 0.05, f"with the steady policy a worker still faults {steady:.2f} of its pages in per call"
    # a benchmark that is not a worker applies the same policy to itself
    here = faults_per_page(worker_env(1, "default"), "from bench import allocator; assert allocator.apply_here('steady')")
    assert here < 0.05, here


def test_the_run_policy_wins_over_the_callers_shell(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert not set(allocator.STEADY_ENV) & set(worker_env(1, "default"))
    assert {k: worker_env(1, "steady")[k] for k in allocator.STEADY_ENV} == allocator.STEADY_ENV


@pytest.mark.parametrize("policy", ["jemalloc", "tcmalloc"])
def test_preloaded_allocators_are_the_ones_a_worker_runs(policy: str, monkeypatch: pytest.MonkeyPatch):
    """jemalloc and tcmalloc come from the OS packages the README's commands install; a worker's
    process (and what it starts) maps that library, and no other policy leaks in from the shell."""
    if allocator.unavailable(policy):
        if IN_CI:
            pytest.fail(f"{policy} must be installed in CI: {allocator.unavailable(policy)}")
        pytest.skip(allocator.unavailable(policy))
    lib = allocator.library(policy)
    code = "print(open('/proc/self/maps').read())"
    maps = subprocess.run([sys.executable, "-c", code], env=worker_env(1, policy), capture_output=True, text=True,
                          timeout=60).stdout
    assert lib in maps
    # a shell that preloads an allocator (under any file name) must not turn "default" into it,
    # and its other preloads stay
    monkeypatch.setenv("LD_PRELOAD", f"{lib}:/usr/lib/libfoo.so /opt/libjemalloc.so")
    assert worker_env(1, "default").get("LD_PRELOAD") == "/usr/lib/libfoo.so"
    monkeypatch.setenv("LD_PRELOAD", lib)
    maps = subprocess.run([sys.executable, "-c", code], env=worker_env(1, "default"), capture_output=True, text=True,
                          timeout=60).stdout
    assert lib not in maps
