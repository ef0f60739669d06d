"""Statistics on latency samples: summaries, the median's confidence interval, the payload cost fit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054
NOISY_IQR_RATIO = 0.10
MAX_PLAUSIBLE_BANDWIDTH = 1e12  # bytes/s; a fitted slope faster than 1 TB/s is noise, not a copy  # torch.utils.benchmark warns when IQR/median exceeds 10%


def quantile_ranks(n: int, q: float, z: float = Z95) -> tuple[int, int]:
    """1-based ranks of the order statistics bracketing the q-quantile with ~95% confidence
    (distribution-free: the count of samples below the quantile is Binomial(n, q); normal
    approximation, rounded outward). They may fall outside 1..n: then the sample cannot bound it."""
    half = z * math.sqrt(n * q * (1 - q))
    return int(math.floor(n * q - half)), int(math.ceil(n * q + half)) + 1


def quantile_ci(sorted_x: np.ndarray, q: float, z: float = Z95) -> tuple[float, float] | None:
    """The q-quantile's confidence interval from order statistics, or None when the sample is too
    small to bound it on both sides (then a "p99" would only be the sample's maximum)."""
    lo, hi = quantile_ranks(len(sorted_x), q, z)
    if lo < 1 or hi > len(sorted_x):
        return None
    return float(sorted_x[lo - 1]), float(sorted_x[hi - 1])


def min_samples_for(q: float, z: float = Z95) -> int:
    """The smallest sample whose order statistics bound the q-quantile on both sides (p90: 53,
    p99: 563; every larger sample does too): below it the report says "not estimable" and shows
    the maximum as the maximum."""
    n = 1
    while True:
        lo, hi = quantile_ranks(n, q, z)
        if lo >= 1 and hi <= n:
            return n
        n += 1


def median_ci(sorted_x: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (binomial normal approximation).

    Ranks n/2 -/+ z*sqrt(n)/2 (1-based, rounded outward); for tiny n the CI is the full range.
    """
    n = len(sorted_x)
    if n == 0:
        return (math.nan, math.nan)
    lo, hi = quantile_ranks(n, 0.5, z)
    return float(sorted_x[max(lo, 1) - 1]), float(sorted_x[min(hi, n) - 1])


@dataclass(frozen=True)
class Summary:
    """Summary of n samples (any unit; the harness uses seconds)."""

    n: int
    mean: float
    stdev: float
    min: float
    max: float
    p50: float
    p90: float | None  # None when the sample cannot bound it (see min_samples_for)
    p99: float | None
    q25: float
    q75: float
    iqr: float
    ci_low: float
    ci_high: float
    rel_ci: float  # half-width of the median's 95% CI relative to the median
    noisy: bool  # IQR/median above NOISY_IQR_RATIO: the spread is too wide to trust the median alone
    p90_ci: tuple[float, float] | None = None  # 95% order-statistic interval, None when not estimable
    p99_ci: tuple[float, float] | None = None

    def tail_text(self, name: str, fmt=lambda v: f"{v:.3g}") -> str:
        """"1.23 ms [1.1-1.4]" for an estimable percentile; "not estimable (n=30)" otherwise."""
        value, ci = getattr(self, name), getattr(self, f"{name}_ci")
        if value is None or ci is None:
            return f"not estimable (n={self.n})"
        return f"{fmt(value)} [{fmt(ci[0])}-{fmt(ci[1])}]"

    def to_json(self) -> dict[str, float | int | bool]:
        return asdict(self)


def summarize(samples: np.ndarray | list[float], noisy_ratio: float = NOISY_IQR_RATIO) -> Summary:
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    q25, p50, q75, p90, p99 = np.percentile(x, [25, 50, 75, 90, 99])
    lo, hi = median_ci(x)
    rel = (hi - lo) / 2 / p50 if p50 > 0 else math.inf
    iqr = float(q75 - q25)
    ci90, ci99 = quantile_ci(x, 0.90), quantile_ci(x, 0.99)
    return Summary(
        n=n, mean=float(x.mean()), stdev=float(x.std(ddof=1)) if n > 1 else 0.0,
        min=float(x[0]), max=float(x[-1]), p50=float(p50),
        p90=float(p90) if ci90 else None, p99=float(p99) if ci99 else None,
        q25=float(q25), q75=float(q75), iqr=iqr, ci_low=lo, ci_high=hi, rel_ci=float(rel),
        noisy=bool(p50 > 0 and iqr / p50 > noisy_ratio), p90_ci=ci90, p99_ci=ci99,
    )


@dataclass(frozen=True)
class CostFit:
    """latency = fixed_s + bytes / bandwidth_Bps, fitted on (bytes, median latency) points."""

    fixed_s: float
    bandwidth_Bps: float  # math.inf when latency does not grow with bytes
    r2: float
    points: int

    def predict(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        per_byte = 0.0 if math.isinf(self.bandwidth_Bps) else 1.0 / self.bandwidth_Bps
        return self.fixed_s + np.asarray(nbytes, dtype=np.float64) * per_byte

    def bandwidth_text(self) -> str:
        bw = self.bandwidth_Bps
        if math.isinf(bw):
            return "no per-byte cost"
        return f"{bw / 1e9:.2f} GB/s" if bw >= 1e9 else f"{bw / 1e6:.1f} MB/s"

    def to_json(self) -> dict[str, float | int | None]:
        d = asdict(self)
        d["bandwidth_Bps"] = None if math.isinf(self.bandwidth_Bps) else self.bandwidth_Bps
        return d


def fit_cost(nbytes: list[float] | np.ndarray, latency_s: list[float] | np.ndarray) -> CostFit:
    """Fit latency = a + b*bytes minimising *relative* error (weights 1/latency), since payloads span
    five orders of magnitude and plain least squares would let the largest point decide the fixed
    cost. Both coefficients are kept non-negative."""
    xb = np.asarray(nbytes, dtype=np.float64)
    y = np.asarray(latency_s, dtype=np.float64)
    if len(xb) < 2:
        raise ValueError("need at least two payload sizes to fit a cost line")
    w = 1.0 / y
    design = np.column_stack([np.ones_like(xb), xb]) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    a, b = float(a), float(b)
    if b <= 1.0 / MAX_PLAUSIBLE_BANDWIDTH:  # flat, or a slope no memory copy could produce: noise
        a, b = float(np.sum(w * w * y) / np.sum(w * w)), 0.0
    elif a < 0:  # through the origin: all per-byte cost
        a, b = 0.0, float(np.sum(w * w * xb * y) / np.sum(w * w * xb * xb))
    pred = a + b * xb
    ss_res = float(np.sum(((y - pred) * w) ** 2))
    ss_tot = float(np.sum(((y - np.average(y, weights=w * w)) * w) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 1e-18 else 1.0  # relative units: ~0 means all points equal
    return CostFit(float(a), math.inf if b == 0 else 1.0 / b, r2, len(xb))
