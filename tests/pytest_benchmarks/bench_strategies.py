"""Every strategy on every built-in model at batch 1, as a pytest-benchmark suite (quick budgets), so
the tools pytest-benchmark users already have work here too:

    pytest tests/pytest_benchmarks/bench_strategies.py --benchmark-autosave
    pytest tests/pytest_benchmarks/bench_strategies.py --benchmark-compare --benchmark-compare-fail=median:10%

(`nox -s pytest_benchmarks -- ARGS` does the same in its own environment.) Not collected by the
test run: the file name doesn't match test_*.py.

Unlike `bench run`, pytest-benchmark measures inside the pytest process: each session is opened for
its test and closed after it, one at a time, and timed from Python (for the CLR strategies that
includes Python's call into .NET, which `bench run` leaves out by timing inside the CLR). For
isolated, process-per-cell figures use `bench run` and `bench compare`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import strategies
from fixtures.builtin import BUILTIN_MODELS
from strategies.base import ModelHandle, SessionOptions
from tests.conftest import require_strategy

MODELS = ["mlp", "cnn", "transformer"]
STRATEGIES = [n for n in strategies.names() if not n.endswith("-test")]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory):
    made: dict[tuple[str, str], Path | None] = {}

    def get(strategy: strategies.Strategy, model: str) -> Path | None:
        if (strategy.name, model) not in made:
            d = None
            if strategy.needs_artifacts:
                d = tmp_path_factory.mktemp(f"{strategy.name}-{model}")
                strategy.prepare(ModelHandle(BUILTIN_MODELS[model], 0), d)
            made[(strategy.name, model)] = d
        return made[(strategy.name, model)]

    return get


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch1_latency(benchmark, artifacts, strategy: str, model: str):
    s = require_strategy(strategy)
    handle = ModelHandle(BUILTIN_MODELS[model], 0)
    with s.open(handle, artifacts(s, model), SessionOptions(threads=1)) as session:
        inputs = handle.example_inputs(1)
        session.run(inputs)
        benchmark.group = f"{model} batch 1"
        benchmark.extra_info.update(strategy=strategy, model=model, batch=1, threads=1)
        out = benchmark.pedantic(session.run, args=(inputs,), rounds=_rounds(session, inputs), iterations=1,
                                 warmup_rounds=3)
    assert set(out) == set(BUILTIN_MODELS[model].outputs)


def _rounds(session, inputs, budget_s: float = 0.4) -> int:
    """Rounds for about budget_s of measurement (quick profile), at least 10."""
    import time

    t0 = time.perf_counter()
    session.run(inputs)
    return max(10, min(5000, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
