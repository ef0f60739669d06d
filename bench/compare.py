"""Compare two runs cell by cell: did anything get slower?

For every cell both runs measured validly, the latency metric compares the two runs' raw samples:

- ratio of medians (new / base), with a 95% bootstrap confidence interval;
- a Mann-Whitney U test on the raw samples (as asv does), two-sided;
- a verdict. *regression*: the test is significant (p < alpha) and the CI's lower bound is at least
  1 + threshold, so we are confident the slowdown is at least the threshold, not merely that the
  runs differ; *improvement*: the mirror image; *unchanged* otherwise. On a shared machine two runs
  minutes apart differ by a few percent with p ~ 0 (thousands of samples see any shift), which is why
  the CI bound, not the point estimate, must clear the threshold.

Throughput (samples/s, higher is better) is compared for cells with several callers, where it is
not just the inverse of latency. It has no raw samples of its own: its verdict follows the latency
test of the same cell, and its ratio must clear the threshold in its own direction.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from bench import allocator, record
from bench.record import CellResult, Status
from bench.results import RunDir

DEFAULT_THRESHOLD = 0.10
# Cells with several callers: on a shared 2-vCPU VM, identical reruns of such cells moved 20-30%
# (CI lower bounds up to 1.26; tests/benchmarks/compare_false_alarms.py), so 10% flagged one in eight.
DEFAULT_CONCURRENT_THRESHOLD = 0.30
DEFAULT_ALPHA = 0.05
BOOTSTRAPS = 400
MAX_BOOTSTRAP_SAMPLES = 4000
ENV_KEYS = ("cpu_model", "logical_cores", "memory_gb", "os", "python")


@dataclass(frozen=True)
class Change:
    cell_id: str
    metric: str  # "latency p50" | "throughput"
    better: str  # "lower" | "higher"
    base: float
    new: float
    ratio: float  # new / base
    ci_low: float | None  # 95% CI of the ratio; None for throughput (no samples of its own)
    ci_high: float | None
    p_value: float | None
    verdict: str  # "regression" | "improvement" | "unchanged"


@dataclass
class Comparison:
    base: str
    new: str
    threshold: float
    alpha: float
    concurrent_threshold: float = DEFAULT_CONCURRENT_THRESHOLD
    changes: list[Change] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)  # measured validly in base only
    only_new: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # valid in base, measured but not valid in new
    warnings: list[str] = field(default_factory=list)
    base_cells: int = 0  # cells the baseline measured validly
    fixed: list[str] = field(default_factory=list)  # failed or wrong in base, valid in new
    partial_baseline: bool = False  # cells the baseline lacks are expected (not a failure)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "improvement"]

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "new": self.new, "threshold": self.threshold, "alpha": self.alpha,
                "concurrent_threshold": self.concurrent_threshold,
                "changes": [asdict(c) for c in self.changes], "only_base": self.only_base,
                "only_new": self.only_new, "broken": self.broken, "warnings": self.warnings,
                "base_cells": self.base_cells, "partial_baseline": self.partial_baseline, "fixed": self.fixed}

    @property
    def failed(self) -> bool:
        """What a CI gate fails on: a significant regression past the threshold, a cell that broke, or
        cells the new run measured that the baseline lacks (a half-recorded baseline would pass on too
        little), unless a partial baseline is expected."""
        return bool(self.regressions or self.broken or (self.only_new and not self.partial_baseline))


def ratio_ci(base: np.ndarray, new: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile-bootstrap CI of median(new) / median(base)."""
    a = base if len(base) <= MAX_BOOTSTRAP_SAMPLES else rng.choice(base, MAX_BOOTSTRAP_SAMPLES, replace=False)
    b = new if len(new) <= MAX_BOOTSTRAP_SAMPLES else rng.choice(new, MAX_BOOTSTRAP_SAMPLES, replace=False)
    ma = np.median(rng.choice(a, (BOOTSTRAPS, len(a))), axis=1)
    mb = np.median(rng.choice(b, (BOOTSTRAPS, len(b))), axis=1)
    r = mb / ma
    return float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))


def mann_whitney_p(base: np.ndarray, new: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    if len(base) < 2 or len(new) < 2:
        return 1.0
    return float(mannwhitneyu(base, new, alternative="two-sided").pvalue)


def _verdict(ratio_lo: float, ratio_hi: float, p: float, better: str, threshold: float, alpha: float) -> str:
    """ratio_lo/hi bound new/base; for 'higher is better' metrics a drop is the regression."""
    if p >= alpha:
        return "unchanged"
    worse_lo, worse_hi = (ratio_lo, ratio_hi) if better == "lower" else (1 / ratio_hi, 1 / ratio_lo)
    if worse_lo >= 1 + threshold:
        return "regression"
    if worse_hi <= 1 / (1 + threshold):
        return "improvement"
    return "unchanged"


def _valid(results: Iterable[CellResult]) -> dict[str, CellResult]:
    """The rows (cells and their parts, each apart) measured validly, with samples to compare, by id."""
    return {r.id: r for r in record.with_parts(results) if r.ok and r.samples_ns}


def _bare(r: CellResult) -> CellResult:
    """A row without the parts inside it: its parts are rows of their own here, compared apart."""
    return replace(r, parts=[]) if r.parts else r


def compare_cells(base_cells: Iterable[CellResult], new_cells: Iterable[CellResult], threshold: float = DEFAULT_THRESHOLD,
                  alpha: float = DEFAULT_ALPHA, concurrent_threshold: float = DEFAULT_CONCURRENT_THRESHOLD,
                  ) -> tuple[list[Change], list[str], list[str]]:
    """Every cell's latency samples, then the figures its scenario names (``Scenario.metrics``). A cell's
    parts (length buckets) are judged apart, each under its own id (``bench.record.with_parts``)."""
    from bench import scenarios
    from bench.results import summary_frame

    valid_base, valid_new = _valid(base_cells), _valid(new_cells)
    common = sorted(set(valid_base) & set(valid_new))
    frames = [summary_frame([_bare(v[c]) for c in common]).set_index("cell_id") if common else None
              for v in (valid_base, valid_new)]
    rng = np.random.default_rng(0)
    changes: list[Change] = []
    for cid in common:
        b, n = valid_base[cid], valid_new[cid]
        scenario = scenarios.lookup(b.cell.scenario)
        a = np.asarray(b.samples_ns, dtype=np.float64)
        c = np.asarray(n.samples_ns, dtype=np.float64)
        ma, mc = float(np.median(a)), float(np.median(c))
        lo, hi = ratio_ci(a, c, rng)
        p = mann_whitney_p(a, c)
        th = concurrent_threshold if scenario.latency_threshold is not None else threshold
        if scenario.compares_latency:
            changes.append(Change(cid, "latency p50", "lower", ma / 1e9, mc / 1e9, mc / ma, lo, hi, p,
                                  _verdict(lo, hi, p, "lower", th, alpha)))
        for m in scenario.metrics:
            vb, vn = (f.at[cid, m.key] if m.key in f.columns else None for f in frames)
            if vb is None or vn is None or not (vb == vb and vn == vn) or vb <= 0:  # missing or NaN
                continue
            r = float(vn) / float(vb)
            if m.follows_latency:
                # no samples of its own: the latency interval, inverted, bounds it (closed loop: X = N / latency)
                mth = concurrent_threshold
                v = _verdict(1 / hi, 1 / lo, p, m.better, mth, alpha) if m.better == "higher" else _verdict(lo, hi, p, m.better, mth, alpha)
            else:
                mth = m.threshold
                worse = r if m.better == "lower" else 1 / r if r > 0 else math.inf
                v = "regression" if worse >= 1 + mth else "improvement" if worse <= 1 / (1 + mth) else "unchanged"
            if v == "regression" and (r > 1 / (1 + mth) if m.better == "higher" else r < 1 + mth) \
                    or v == "improvement" and (r < 1 + mth if m.better == "higher" else r > 1 / (1 + mth)):
                v = "unchanged"  # the measured figure itself must agree
            changes.append(Change(cid, m.label, m.better, float(vb), float(vn), r, None, None,
                                  p if m.follows_latency else None, v))
    return changes, sorted(set(valid_base) - set(valid_new)), sorted(set(valid_new) - set(valid_base))


def environment_warnings(base_env: dict[str, Any], new_env: dict[str, Any]) -> list[str]:
    """What differs between the machines and software of two runs (comparisons across them mislead)."""
    out = []
    for k in ENV_KEYS:
        if base_env.get(k) != new_env.get(k):
            out.append(f"different {k}: {base_env.get(k)} -> {new_env.get(k)}")
    bp, np_ = base_env.get("packages") or {}, new_env.get("packages") or {}
    for pkg in sorted(set(bp) | set(np_)):
        if bp.get(pkg) != np_.get(pkg):
            out.append(f"different {pkg}: {bp.get(pkg)} -> {np_.get(pkg)}")
    bs, ns = base_env.get("strategy_runtimes") or {}, new_env.get("strategy_runtimes") or {}
    for s in sorted(set(bs) & set(ns)):
        for lib in sorted(set(bs[s]) | set(ns[s])):
            if bs[s].get(lib) != ns[s].get(lib) and lib not in bp:
                out.append(f"different {lib} (for {s}): {bs[s].get(lib)} -> {ns[s].get(lib)}")
    return list(dict.fromkeys(out))


def _keyed(cells: Iterable[CellResult], policies: list[str], qualify: bool) -> list[CellResult]:
    """Cells keyed for comparison: as recorded, or, when either run compared several allocators, each
    id ending in the policy the cell ran (a one-policy run's cells ran the run's policy), so a run
    under `default` compares with the `default` cells of a run that also measured `jemalloc`."""
    if not qualify:
        return list(cells)
    out = []
    for r in cells:
        if not r.cell.malloc:
            r = replace(r, cell=replace(r.cell, malloc=policies[0]))
        out.append(r)
    return out


def compare_runs(base: RunDir, new: RunDir, threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA,
                 concurrent_threshold: float = DEFAULT_CONCURRENT_THRESHOLD, partial_baseline: bool = False) -> Comparison:
    base_meta, new_meta = base.meta(), new.meta()
    bm, nm = (allocator.of_run(m.get("config") or {}) for m in (base_meta, new_meta))
    from bench import scenarios

    for m in (base_meta, new_meta):  # the runs' plug-ins, for their scenarios' metrics (gone ones: latency only)
        with contextlib.suppress(Exception):
            scenarios.discover((m.get("config") or {}).get("plugins") or [])
    qualify = len(bm) > 1 or len(nm) > 1  # a run that compared allocators names the policy in its ids
    base_cells, new_cells = _keyed(base.load_cells(), bm, qualify), _keyed(new.load_cells(), nm, qualify)  # read once each
    changes, only_base, only_new = compare_cells(base_cells, new_cells, threshold, alpha, concurrent_threshold)
    # by row: a cell and each of its parts (a length bucket) are judged apart
    new_status = {r.id: r.status for r in record.with_parts(new_cells)}
    broken = [c for c in only_base if new_status.get(c) in (Status.ERROR, Status.INVALID, Status.UNSUPPORTED)]  # unsupported: a capability lost
    only_base = [c for c in only_base if c not in broken]
    base_status = {r.id: r.status for r in record.with_parts(base_cells)}
    fixed = [c for c in only_new if base_status.get(c) in (Status.ERROR, Status.INVALID, Status.SKIPPED, Status.UNSUPPORTED)]  # the base measured them
    only_new = [c for c in only_new if c not in fixed]
    cmp = Comparison(base.id, new.id, threshold, alpha, concurrent_threshold, changes, only_base, only_new, broken,
                     partial_baseline=partial_baseline, fixed=fixed)
    cmp.base_cells = len({c.cell_id for c in changes}) + len(only_base) + len(broken)
    cmp.warnings = environment_warnings(base_meta.get("environment", {}), new_meta.get("environment", {}))
    for r in (base, new):
        if getattr(r, "unreadable", None):
            cmp.warnings.append(f"{len(r.unreadable)} cell file(s) of {r.id} could not be read and were not compared: "
                                f"{', '.join(r.unreadable[:6])}")
    if bm != nm:
        cmp.warnings.append(f"different allocator policy (--malloc): {','.join(bm)} -> {','.join(nm)}")
    if not changes:
        cmp.warnings.append("the two runs have no validly measured cell in common")
    return cmp


def _fmt_value(metric: str, v: float) -> str:
    from bench.runner import fmt_time

    if metric.startswith("latency"):
        return fmt_time(v)
    return f"{v:,.0f}/s" if metric == "throughput" or "rate" in metric else f"{v:,.3g}"


def format_ci(c: Change) -> str:
    if c.ci_low is None:
        return "(latency's)" if c.p_value is not None else "(ratio only)"
    return f"[{c.ci_low:.3f}, {c.ci_high:.3f}]"


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def format_comparison(cmp: Comparison) -> str:
    compared = len({c.cell_id for c in cmp.changes})
    lines = [f"compare {cmp.base} -> {cmp.new}: {len(cmp.changes)} metrics over {compared} cells "
             f"({compared} of the baseline's {cmp.base_cells} valid cells); threshold {cmp.threshold:.0%} "
             f"({cmp.concurrent_threshold:.0%} with several callers), alpha {cmp.alpha:g} "
             f"(flagged when Mann-Whitney p < alpha and the ratio's 95% CI clears the threshold)"]
    for w in cmp.warnings:
        lines.append(f"warning: {w}")
    for title, rows in (("REGRESSIONS", cmp.regressions), ("improvements", cmp.improvements)):
        if not rows:
            continue
        lines.append(f"\n{title} ({len(rows)}):")
        width = max(len(c.cell_id) for c in rows)
        lines.append(f"  {'cell':<{width}}  {'metric':<12} {'base':>11} {'new':>11} {'ratio':>7}  {'95% CI':<15} {'p':>8}")
        for c in sorted(rows, key=lambda c: -abs(math.log(c.ratio))):
            lines.append(f"  {c.cell_id:<{width}}  {c.metric:<12} {_fmt_value(c.metric, c.base):>11} "
                         f"{_fmt_value(c.metric, c.new):>11} {c.ratio:>6.3f}x  {format_ci(c):<15}  "
                         + (f"{c.p_value:>8.1e}" if c.p_value is not None else f"{'-':>8}"))
    if cmp.broken:
        lines.append(f"\nBROKEN ({len(cmp.broken)}): valid in {cmp.base}, failed or wrong in {cmp.new}: {', '.join(cmp.broken)}")
    unchanged = len(cmp.changes) - len(cmp.regressions) - len(cmp.improvements)
    lines.append(f"\n{_n(len(cmp.regressions), 'regression')}, {_n(len(cmp.improvements), 'improvement')}, "
                 f"{unchanged} unchanged" + (f", {len(cmp.broken)} broken" if cmp.broken else ""))
    if cmp.only_base:
        lines.append(f"only in {cmp.base} (not measured validly in {cmp.new}): {', '.join(cmp.only_base)}")
    if cmp.fixed:
        lines.append(f"fixed ({len(cmp.fixed)}): failed or wrong in {cmp.base}, valid in {cmp.new}: {', '.join(cmp.fixed)}")
    if cmp.only_new:
        if cmp.partial_baseline:
            lines.append(f"only in {cmp.new} (a partial baseline was expected): {', '.join(cmp.only_new)}")
        else:
            lines.append(f"MISSING FROM THE BASELINE ({len(cmp.only_new)}): {cmp.base} has no valid measurement of "
                         f"{', '.join(cmp.only_new[:10])}{' ...' if len(cmp.only_new) > 10 else ''}; this fails the "
                         "comparison (--partial-baseline if the baseline is expected to lack them)")
    return "\n".join(lines)
