"""The sampler's stopping rules, with a session whose call time is known (a sleep)."""

from __future__ import annotations

import time

import numpy as np

from bench.measure import SamplingConfig, closed_loop, sample, warm_up
from strategies.base import Session


class Sleeper(Session):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def run(self, inputs):
        self.calls += 1
        time.sleep(self.seconds)
        return {"y": np.zeros(1)}


def test_warm_up_stops_when_one_call_exceeds_the_budget():
    cfg = SamplingConfig(warmup_s=0.05, warmup_calls=5, max_time_s=0.1)
    s = Sleeper(0.3)
    t0 = time.perf_counter()
    calls, per_call = warm_up(s, {}, cfg)
    assert calls == 1 and s.calls == 1 and time.perf_counter() - t0 < 0.6
    assert 0.3 <= per_call < 0.5


def test_sampling_converges_on_a_steady_call_and_respects_the_budget():
    cfg = SamplingConfig(min_time_s=0.1, max_time_s=2.0, min_samples=30, target_rel_ci=0.2, round_s=0.02)
    out = sample(Sleeper(0.001), {}, cfg, per_call_s=0.001)
    assert out.converged and len(out.latency_ns) >= 30
    assert 0.9e-3 <= np.median(out.latency_ns) / 1e9 < 5e-3
    capped = sample(Sleeper(0.001), {}, SamplingConfig(min_time_s=0.0, max_time_s=0.05, target_rel_ci=0.0), 0.001)
    assert not capped.converged and capped.wall_s < 0.5


def test_closed_loop_counts_concurrent_calls():
    out = closed_loop(Sleeper(0.01), {}, callers=4, duration_s=0.3, warmup_s=0.05)
    # four callers sleeping 10 ms each: about 4x the calls one caller would complete
    assert out.calls >= 60 and not out.errors
    assert 0.009 <= np.median(out.latency_ns) / 1e9 < 0.05


def test_tail_sampling_runs_until_the_p99_is_bounded():
    """Asked for a p99, the sampler does not stop when the median has settled (30 samples would do)
    but when the samples bound the p99 within the target; without it, it stops far earlier."""
    from bench.stats import min_samples_for, summarize

    base = dict(min_time_s=0.0, max_time_s=5.0, min_samples=30, target_rel_ci=0.5, round_s=0.01)
    plain = sample(Sleeper(0.0005), {}, SamplingConfig(**base), per_call_s=0.0005)
    assert plain.converged and len(plain.latency_ns) < min_samples_for(0.99)
    assert summarize(plain.latency_ns / 1e9).p99 is None
    tails = sample(Sleeper(0.0005), {}, SamplingConfig(**base, tail_quantile=0.99, tail_target_rel_ci=0.5),
                   per_call_s=0.0005)
    assert tails.converged and "p99 CI within" in tails.stop_reason
    s = summarize(tails.latency_ns / 1e9)
    assert len(tails.latency_ns) >= min_samples_for(0.99) and s.p99 is not None and s.p99_ci is not None
