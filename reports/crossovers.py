"""Crossovers read off the measurements: where a route's fixed cost stops mattering (the payload fit),
and the batch size and the number of callers at which the ranking changes.

Pure functions of the run's table and fits, so they can be checked on synthetic cost lines."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from bench.constraints import LANGUAGES
from bench.stats import CostFit
from strategies.base import RouteTable

FIXED_SHARE = 0.10  # "the fixed cost no longer matters": under 10% of a call


@dataclass(frozen=True)
class PayloadCrossover:
    strategy: str
    fixed_s: float
    per_byte_s: float  # 0: no measurable per-byte cost
    bytes: float | None  # above this payload, the fixed cost is under FIXED_SHARE of a call (None: never)
    measured_max_bytes: float | None = None

    @property
    def inside_measured(self) -> bool:
        return self.bytes is not None and self.measured_max_bytes is not None and self.bytes <= self.measured_max_bytes


def payload_crossover(fit: CostFit, strategy: str, share: float = FIXED_SHARE,
                      measured_max_bytes: float | None = None) -> PayloadCrossover:
    """fixed / (fixed + per_byte * s) < share  <=>  s > fixed * (1 - share) / (share * per_byte)."""
    per_byte = 0.0 if math.isinf(fit.bandwidth_Bps) else 1.0 / fit.bandwidth_Bps
    if fit.fixed_s <= 0:
        at: float | None = 0.0
    elif per_byte <= 0:
        at = None
    else:
        at = fit.fixed_s * (1 - share) / (share * per_byte)
    return PayloadCrossover(strategy, fit.fixed_s, per_byte, at, measured_max_bytes)


@dataclass(frozen=True)
class Switch:
    """The leader changes between two measured points of an axis (batch size, callers)."""

    caller: str  # the application language whose routes were compared
    model: str
    axis: str  # "batch" (single-caller latency) or "callers" (closed-loop throughput)
    before: str
    after: str
    x_before: float
    x_after: float
    at: float | None  # where the two leaders' lines cross, interpolated between the measured points
    close: bool  # the lead on one side is under the tie margin: the switch may be noise
    threads: int = 1
    malloc: str = ""

    def text(self) -> str:
        where = f"near {self.at:.3g}" if self.at is not None else f"between {self.x_before:g} and {self.x_after:g}"
        if self.axis == "batch":
            text = (f"{self.before} is fastest up to batch {self.x_before:g}, {self.after} from batch {self.x_after:g} "
                    f"(their lines cross {where})")
        else:
            n = "caller" if self.x_before == 1 else "callers"
            text = (f"{self.before} gives the most samples/s up to {self.x_before:g} {n}, {self.after} from "
                    f"{self.x_after:g} callers (their lines cross {where})")
        return text + ("; the lead on one side is under the tie margin, so this may be noise" if self.close else "")


def switches(points: dict[str, dict[float, float]], higher_is_better: bool = False,
             tie_within: float = 0.05) -> list[tuple[float, float, str, str, float | None, bool]]:
    """Per strategy, value at each x; where the best strategy changes between consecutive x (measured
    by at least two strategies): (x0, x1, leader before, leader after, interpolated crossing, close)."""
    xs = sorted({x for pts in points.values() for x in pts})
    sign = -1.0 if higher_is_better else 1.0

    def leader(x: float) -> tuple[str, bool] | None:
        vals = sorted((sign * pts[x], s) for s, pts in points.items() if x in pts and pts[x] == pts[x])
        if len(vals) < 2:
            return None
        best, second = abs(vals[0][0]), abs(vals[1][0])
        lead = (best / second if higher_is_better else second / best) if best and second else math.inf
        return vals[0][1], lead < 1 + tie_within

    out = []
    prev: tuple[float, str, bool] | None = None
    for x in xs:
        got = leader(x)
        if got is None:
            continue
        if prev is not None and got[0] != prev[1] and x in points[prev[1]]:  # (a leader not measured here did not lose)
            x0, a, b = prev[0], prev[1], got[0]
            at = None
            pa, pb = points[a], points[b]
            if x0 in pb and x in pa:
                d0, d1 = sign * (pa[x0] - pb[x0]), sign * (pa[x] - pb[x])  # <0: a better
                if d0 != d1:
                    at = x0 + (x - x0) * d0 / (d0 - d1)
            out.append((x0, x, a, b, at, prev[2] or got[1]))
        prev = (x, got[0], got[1])
    return out


def ranking_switches(df: pd.DataFrame, facts: RouteTable, tie_within: float = 0.05,
                     payload_models: tuple[str, ...] = ("identity",)) -> list[Switch]:
    """For each caller language and model: where the fastest single-caller route changes with the batch
    size, and where the route with the most samples/s changes with the number of callers (at the
    smallest batch). Failed and invalid cells never lead."""
    out: list[Switch] = []
    if df.empty:
        return out
    ok = df[df.valid & ~df.model.isin(payload_models) & df.p50_ms.notna()]
    if "scenario" in ok:
        lat = ok[ok.scenario == "latency"]
        loop = ok[ok.scenario.isin(["latency", "closed-loop"])]
    else:
        lat, loop = ok, ok
    def mine(frame: pd.DataFrame, caller: str) -> pd.DataFrame:
        return frame[[facts.of(s).callable_from(caller) for s in frame.strategy]]

    for caller in LANGUAGES:
        single = mine(lat[lat.concurrency == 1], caller) if len(lat) else lat
        for (model, threads, malloc), g in single.groupby(["model", "threads", "malloc"], sort=True):
            pts = {s: dict(zip(gg.batch.astype(float), gg.p50_ms.astype(float))) for s, gg in g.groupby("strategy")}
            out += [Switch(caller, str(model), "batch", a, b, x0, x1, at, close, int(threads), str(malloc))
                    for x0, x1, a, b, at, close in switches(pts, False, tie_within)]
        many = mine(loop, caller) if len(loop) else loop
        for (model, threads, malloc), g in many.groupby(["model", "threads", "malloc"], sort=True):
            g = g[g.batch == g.batch.min()]
            pts = {s: dict(zip(gg.concurrency.astype(float), gg.throughput_sps.astype(float)))
                   for s, gg in g.groupby("strategy")}
            out += [Switch(caller, str(model), "callers", a, b, x0, x1, at, close, int(threads), str(malloc))
                    for x0, x1, a, b, at, close in switches(pts, True, tie_within)]
    return out


def to_json(payload: list[PayloadCrossover], ranking: list[Switch]) -> dict[str, Any]:
    return {"fixed_share": FIXED_SHARE, "payload": [asdict(p) for p in payload], "ranking": [asdict(s) for s in ranking]}


def from_json(d: dict[str, Any]) -> tuple[list[PayloadCrossover], list[Switch]]:
    return [PayloadCrossover(**p) for p in d.get("payload", [])], [Switch(**s) for s in d.get("ranking", [])]
