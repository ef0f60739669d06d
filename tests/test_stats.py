"""Statistics against NumPy on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import fit_cost, median_ci, min_samples_for, quantile_ci, summarize


def test_summary_matches_numpy_on_known_data():
    rng = np.random.default_rng(7)
    x = rng.lognormal(mean=-9, sigma=0.3, size=1001)
    s = summarize(x)
    assert s.n == 1001
    assert s.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert s.stdev == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("q25", 25), ("q75", 75)):
        assert getattr(s, name) == pytest.approx(np.percentile(x, q), rel=1e-12), name
    assert s.p50 == pytest.approx(np.median(x), rel=1e-12)
    assert s.iqr == pytest.approx(np.subtract(*np.percentile(x, [75, 25])), rel=1e-12)
    assert (s.min, s.max) == (x.min(), x.max())


def test_summary_exact_small_case():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.p50, s.mean, s.q25, s.q75) == (3.0, 22.0, 2.0, 4.0)
    assert s.noisy  # IQR 2 on a median of 3
    assert not summarize([10.0, 10.1, 10.0, 9.9, 10.0]).noisy


def test_median_ci_covers_true_median_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    trials = 2000
    for _ in range(trials):
        lo, hi = median_ci(np.sort(rng.exponential(size=101)))
        hits += lo <= math.log(2) <= hi  # true median of Exp(1)
    assert 0.93 <= hits / trials <= 0.98


def test_median_ci_narrows_with_samples():
    rng = np.random.default_rng(2)
    wide = summarize(rng.normal(1.0, 0.1, 50)).rel_ci
    narrow = summarize(rng.normal(1.0, 0.1, 5000)).rel_ci
    assert narrow < wide / 5


@pytest.mark.parametrize("fixed,bw", [(20e-6, 2e9), (1e-3, 50e6), (3e-6, 10e9)])
def test_cost_fit_recovers_fixed_cost_and_bandwidth(fixed, bw):
    sizes = np.array([2**10, 2**14, 2**18, 2**20, 2**24, 2**26], dtype=float)
    lat = fixed + sizes / bw
    f = fit_cost(sizes, lat)
    assert f.fixed_s == pytest.approx(fixed, rel=1e-6)
    assert f.bandwidth_Bps == pytest.approx(bw, rel=1e-6)
    assert f.r2 == pytest.approx(1.0)


def test_cost_fit_flat_and_proportional_edges():
    sizes = np.array([1e3, 1e5, 1e7])
    flat = fit_cost(sizes, [5e-6, 5e-6, 5e-6])
    assert math.isinf(flat.bandwidth_Bps) and flat.fixed_s == pytest.approx(5e-6)
    prop = fit_cost(sizes, sizes / 1e9 * np.array([1.0, 1.0, 1.0]))
    assert prop.fixed_s == pytest.approx(0.0, abs=1e-12) and prop.bandwidth_Bps == pytest.approx(1e9, rel=1e-6)
    with pytest.raises(ValueError):
        fit_cost([1e3], [1e-6])


@pytest.mark.parametrize("q,n", [(0.9, 60), (0.9, 400), (0.99, 600), (0.99, 3000)])
def test_tail_intervals_cover_the_true_quantile(q: float, n: int):
    """Order-statistic intervals for p90 and p99 contain Exp(1)'s true quantile at least ~95% of the
    time, from the smallest sample that can bound them up to thousands of samples."""
    rng = np.random.default_rng(int(q * 1000) + n)
    true = -math.log(1 - q)
    trials = 1500
    hits = 0
    for _ in range(trials):
        ci = quantile_ci(np.sort(rng.exponential(size=n)), q)
        assert ci is not None and ci[0] <= ci[1]
        hits += ci[0] <= true <= ci[1]
    assert 0.94 <= hits / trials <= 0.995, hits / trials


def test_no_tail_percentile_from_too_few_samples():
    """30 samples cannot bound a p99 (it would be the maximum): no value, no interval, and the text
    says so; from the minimum count on, both are there."""
    rng = np.random.default_rng(5)
    assert (min_samples_for(0.9), min_samples_for(0.99)) == (53, 563)
    x = rng.exponential(size=30)
    small = summarize(x)
    assert small.p99 is None and small.p99_ci is None and small.p90 is None
    assert small.tail_text("p99") == "not estimable (n=30)"
    assert small.max == float(np.max(x)) and small.p50 == pytest.approx(float(np.median(x)))
    for q, name in ((0.9, "p90"), (0.99, "p99")):
        n = min_samples_for(q)
        assert getattr(summarize(rng.exponential(size=n - 1)), name) is None
        s = summarize(rng.exponential(size=n))
        lo, hi = getattr(s, f"{name}_ci")
        assert lo <= getattr(s, name) <= hi <= s.max
