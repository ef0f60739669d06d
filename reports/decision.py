"""The decision by caller language and constraints: per caller language, model and batch size, the
strategies that language can call, ranked by median latency with honest ties, and every other
strategy with its reason for not being ranked, in words. Rendered into the report's first section and
written as decision.json for CI and other tools.

A lead smaller than the tie margin (5% by default: run-to-run drift on a shared machine is larger
than 1%) or inside overlapping 95% intervals of the two medians is a tie, never a win."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from bench.constraints import DEFAULT_TIE_WITHIN, LANGUAGES
from bench.rematch import close_to, paired
from reports import crossovers
from strategies.base import RouteFacts, RouteTable, base_name

NOT_MEASURED = "not measured in this run"
LANGUAGE_NAMES = {"python": "Python", "csharp": "C#", "cpp": "C++", "any": "any language (a network service)"}


@dataclass
class Constraints:
    caller: str = ""  # "" : one block per language
    python_at_deployment: bool | None = None  # False: routes that need Python where the application runs are out
    memory_budget_mb: float | None = None
    p99_budget_ms: float | None = None
    tie_within: float = DEFAULT_TIE_WITHIN
    required_rate_rps: float | None = None  # requests/s a route must hold within the slo scenario's budget

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Constraints:
        d = dict(d or {})
        return cls(**{k: d[k] for k in ("caller", "python_at_deployment", "memory_budget_mb", "p99_budget_ms", "tie_within",
                                        "required_rate_rps") if k in d})

    @property
    def tie_floor(self) -> float:
        """The least tie margin: a ``tie_within`` the reviewer set (anything but the default, which is only the
        fallback where a route ran in one process); 0 otherwise, so the margin is the spread measured."""
        return self.tie_within if self.tie_within != DEFAULT_TIE_WITHIN else 0.0

    def describe(self, interleaved: bool = False) -> str:
        """The constraints in words; ``interleaved``: the run measured its routes side by side in rounds."""
        parts = []
        if self.python_at_deployment is False:
            parts.append("no Python at deployment")
        if self.memory_budget_mb is not None:
            parts.append(f"memory added within {self.memory_budget_mb:g} MiB")
        if self.p99_budget_ms is not None:
            parts.append(f"p99 within {_ms(self.p99_budget_ms)}")
        if self.required_rate_rps is not None:
            parts.append(f"holds {self.required_rate_rps:,.0f} requests/s within the slo scenario's p99 budget")
        if interleaved:
            parts.append("routes measured side by side in interleaved rounds are tied when their paired ratio's 95% "
                         "interval contains 1 or their lead is under the spread measured between their processes"
                         + (f" (at least {self.tie_floor:.0%})" if self.tie_floor else "")
                         + f"; where a route ran in one process, a lead under {self.tie_within:.0%} is a tie")
        else:
            parts.append(f"a lead under {self.tie_within:.0%} is a tie, and so is one inside the noise: overlapping 95% "
                         "intervals of two cells' medians, or, where close leads were measured again side by side in "
                         "alternating rounds, a paired ratio whose 95% interval contains 1")
        return "; ".join(parts)


def _ms(v: float) -> str:
    from reports.tables import fmt_ms

    return fmt_ms(v)


@dataclass
class Ranked:
    strategy: str
    p50_ms: float
    p99_ms: float | None
    ci_low_ms: float | None
    ci_high_ms: float | None
    throughput_sps: float | None
    mem_added_mb: float | None
    tie_with_first: bool = False
    note: str = ""
    max_rps: float | None = None  # the highest rate within the slo scenario's p99 budget, where measured
    # measured again side by side with the first (bench.rematch): this route's time over the first's, 95% interval
    paired_ratio: float | None = None
    paired_low: float | None = None
    paired_high: float | None = None
    paired_rounds: int | None = None
    #: how much two of this route's processes differed (bench.rounds: largest minus smallest process median over
    #: their middle); with the first's, the tie margin of this route against it. None: it ran in one process
    process_spread: float | None = None
    #: the tie margin applied against the first: the larger of the two routes' process spreads, or the
    #: constraints' ``tie_within`` where either ran in one process. None in decisions made before it existed
    tie_margin: float | None = None

    def paired_text(self) -> str:
        if self.paired_ratio is None:
            return ""
        margin = f"; tie margin {self.tie_margin:.1%}" if self.tie_margin is not None else ""
        return (f"{self.paired_ratio:.3f}x the first's time side by side (95% {self.paired_low:.3f}-{self.paired_high:.3f}, "
                f"{self.paired_rounds} alternating rounds{margin})")


@dataclass
class CellDecision:
    model: str
    batch: int
    threads: int
    malloc: str
    eligible: list[Ranked] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (strategy, reason in words)

    @property
    def leaders(self) -> list[str]:
        return [r.strategy for r in self.eligible if r.tie_with_first or r is self.eligible[0]] if self.eligible else []

    def short(self) -> str:
        """One table cell: the leader (or the tie) and the runner-up's time against it."""
        if not self.eligible:
            return "none valid"
        lead = self.leaders
        if len(lead) > 1:
            return f"tie: {', '.join(lead)} ({_ms(self.eligible[0].p50_ms)})"
        first = self.eligible[0]
        text = f"{first.strategy} {_ms(first.p50_ms)}"
        if len(self.eligible) > 1:
            second = self.eligible[1]
            ratio = second.paired_ratio or second.p50_ms / first.p50_ms
            text += f" (next: {second.strategy} {ratio:.2f}x)"
        return text

    def sentence(self) -> str:
        if not self.eligible:
            return "no strategy this caller can use gave a valid measurement"
        first = self.eligible[0]
        lead = self.leaders
        if len(lead) > 1:
            side = [f"{r.strategy} {r.paired_text()}" for r in self.eligible[1:] if r.strategy in lead and r.paired_ratio]
            return (f"a tie between **{'**, **'.join(lead)}** ({', '.join(_ms(r.p50_ms) for r in self.eligible if r.strategy in lead)} p50): "
                    "within the noise of each other" + (f"; side by side, {'; '.join(side)}" if side else ""))
        text = f"**{first.strategy}** at {_ms(first.p50_ms)} p50"
        if len(self.eligible) > 1:
            second = self.eligible[1]
            text += f", ahead of {second.strategy} (" + (second.paired_text() if second.paired_ratio
                                                          else f"{second.p50_ms / first.p50_ms:.2f}x its time") + ")"
        return text


@dataclass
class Block:
    caller: str
    cells: list[CellDecision]


def _reason_for_language(facts: RouteFacts, caller: str) -> str:
    if facts.callable_from(caller):
        return ""
    langs = facts.languages
    return f"a {' or '.join(LANGUAGE_NAMES.get(x, x) for x in langs)} route; a {LANGUAGE_NAMES[caller]} application cannot call it"


@dataclass(frozen=True)
class Capacity:
    """A route's answer from the slo scenario: the highest rate within the budget (None: none held)."""

    max_rps: float | None
    budget_ms: float
    capped: bool = False  # every rate tried passed: the capacity is at least max_rps


def decide(df: pd.DataFrame, facts: RouteTable, constraints: Constraints,
           payload_models: tuple[str, ...] = ("identity",),
           capacity: dict[tuple[str, int, int, str, str], Capacity] | None = None,
           rematch: dict[tuple[str, int, int, str], Any] | None = None) -> list[Block]:
    """One block per caller language (or the one asked for): per model, batch, threads and allocator
    at the fewest callers, eligible strategies ranked by p50, ties marked, the rest with reasons.
    ``capacity`` ((model, batch, threads, allocator, strategy) -> the slo scenario's answer) adds each route's highest
    rate, and with ``required_rate_rps`` rules out the routes that do not hold it. ``rematch`` (bench.rematch.load)
    holds the close contenders measured again side by side."""
    capacity = capacity or {}
    callers = [constraints.caller] if constraints.caller else list(LANGUAGES)
    main = df[~df.model.isin(payload_models)]
    if main.empty:
        return [Block(c, []) for c in callers]
    main = main[main.concurrency == main.concurrency.min()]
    # the run's typical spread between two processes of one route: a pair's own two spreads are single draws
    # (two processes can agree by chance), so the margin is never under what the run's routes usually show
    spreads = main["process_spread_fraction"].dropna() if "process_spread_fraction" in main else []
    typical = float(spreads.median()) if len(spreads) else 0.0
    blocks = []
    for caller in callers:
        cells = []
        for (model, batch, threads, malloc), g in main.groupby(["model", "batch", "threads", "malloc"], sort=True):
            cd = CellDecision(str(model), int(batch), int(threads), str(malloc))
            candidates = []
            for r in g.sort_values("p50_ms", na_position="last").itertuples():
                f = facts.of(r.strategy)
                why = _reason_for_language(f, caller)
                if not why and constraints.python_at_deployment is False and f.needs_python:
                    why = "needs Python at deployment" + (" (in the service)" if "any" in f.languages else "")
                if not why and not r.valid:
                    err = str(r.error).splitlines()[0][:140] if isinstance(r.error, str) and r.error else ""
                    why = {"invalid": "wrong outputs", "error": "failed", "skipped": "skipped"}.get(r.status, r.status) \
                        + (f": {err}" if err else "")
                if not why and constraints.memory_budget_mb is not None and pd.notna(r.mem_added_mb) \
                        and r.mem_added_mb > constraints.memory_budget_mb:
                    why = f"adds {r.mem_added_mb:,.0f} MiB, over the {constraints.memory_budget_mb:g} MiB budget"
                if not why and constraints.p99_budget_ms is not None:
                    if pd.notna(r.p99_ms):
                        if r.p99_ms > constraints.p99_budget_ms:
                            why = f"p99 {_ms(r.p99_ms)} over the {_ms(constraints.p99_budget_ms)} budget"
                    elif pd.notna(r.max_ms) and r.max_ms > constraints.p99_budget_ms:
                        why = (f"p99 not estimable from {int(r.samples)} samples, and its slowest call "
                               f"({_ms(r.max_ms)}) is over the {_ms(constraints.p99_budget_ms)} budget")
                cap = capacity.get((str(model), int(batch), int(threads), str(malloc), r.strategy))
                if not why and constraints.required_rate_rps is not None:
                    need = constraints.required_rate_rps
                    if cap is None:
                        why = f"its highest rate within a p99 budget was not measured (the slo scenario), so {need:,.0f}/s is unknown"
                    elif cap.max_rps is None or cap.max_rps < need:
                        if cap.capped and cap.max_rps:
                            why = (f"held every rate tried within p99 {cap.budget_ms:g} ms, up to {cap.max_rps:,.0f}/s "
                                   f"(the search's cap); {need:,.0f}/s was not tested")
                        else:
                            held = f"{cap.max_rps:,.0f}/s" if cap.max_rps else "no rate"
                            why = f"holds {held} within p99 {cap.budget_ms:g} ms, under the {need:,.0f}/s required"
                if why:
                    cd.excluded.append((r.strategy, why))
                    continue
                note = "measured from a Python client" if "any" in f.languages and caller != "python" else ""
                candidates.append(Ranked(r.strategy, float(r.p50_ms), _f(r.p99_ms), _f(r.ci_low_ms), _f(r.ci_high_ms),
                                         _f(r.throughput_sps), _f(r.mem_added_mb), note=note,
                                         max_rps=cap.max_rps if cap else None,
                                         process_spread=_f(getattr(r, "process_spread_fraction", None))))
            cd.eligible = _rank(candidates, (rematch or {}).get((str(model), int(batch), int(threads), str(malloc))),
                                constraints.tie_within, max(constraints.tie_floor, typical))
            measured = set(g.strategy)
            for name, f in sorted(facts.items()):
                if name not in measured and not any(base_name(s) == name for s in measured) \
                        and not _reason_for_language(f, caller):
                    cd.excluded.append((name, NOT_MEASURED))
            cells.append(cd)
        blocks.append(Block(caller, cells))
    return blocks


def _rank(candidates: list[Ranked], group: Any, tie_within: float, floor: float = 0.0) -> list[Ranked]:
    """Candidates in p50 order, ties with the first marked. Where the close contenders were measured again
    side by side (``group``, a bench.rematch.Group, covering the fastest), they are ordered by that paired
    ratio, and one is tied with the first when the ratio's 95% interval contains 1 or its lead is under
    ``tie_within`` (two processes of the same route differ by a few percent, steadily); elsewhere a lead
    under ``tie_within`` or overlapping intervals of the cells' medians is a tie."""
    if not candidates:
        return candidates
    usable = set(group.strategies) - set(group.errors) if group is not None and group.medians else set()
    contested = [c for c in candidates if c.strategy in usable]
    if len(contested) >= 2 and candidates[0] in contested:
        ref = contested[0].strategy
        score = {c.strategy: paired(group.medians, ref, c.strategy) for c in contested[1:]}
        if all(score.values()):  # the rematched routes trade places among the slots they hold; the rest keep theirs
            slots = [i for i, c in enumerate(candidates) if c in contested]
            contested.sort(key=lambda c: 1.0 if c.strategy == ref else score[c.strategy].ratio)
            candidates = list(candidates)
            for i, c in zip(slots, contested):
                candidates[i] = c
    first = candidates[0]
    for c in candidates[1:]:
        margin = tie_within
        if first.process_spread is not None and c.process_spread is not None:  # measured in this run
            margin = c.tie_margin = max(first.process_spread, c.process_spread, floor)
        p = paired(group.medians, first.strategy, c.strategy) if c in contested and first in contested else None
        if p is not None:
            c.paired_ratio, c.paired_low, c.paired_high, c.paired_rounds = p.ratio, p.low, p.high, p.rounds
            c.tie_with_first = p.indistinct or p.ratio <= 1 + margin
        else:
            c.tie_with_first = close_to(first.p50_ms, first.ci_high_ms, c.p50_ms, c.ci_low_ms, margin)
    return candidates


def _ranked_json(r: Ranked) -> dict[str, Any]:
    """A ranked route as decision.json holds it; the process spread and tie margin only where measured, so a
    run measured before them decides to the same file."""
    return {k: v for k, v in asdict(r).items() if v is not None or k not in ("process_spread", "tie_margin")}


def _f(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else float(v)


def to_json(blocks: list[Block], constraints: Constraints, crossings: tuple[list, list] | None = None) -> dict[str, Any]:
    """decision.json: the constraints, per caller language and cell the ranked routes with their figures, the ties and
    the excluded routes with reasons, and the crossovers (reports.crossovers) where given."""
    out = {
        "constraints": asdict(constraints),
        "blocks": [{"caller": b.caller, "cells": [{
            "model": c.model, "batch": c.batch, "threads": c.threads, "malloc": c.malloc,
            "eligible": [_ranked_json(r) for r in c.eligible],
            "ties": c.leaders if len(c.leaders) > 1 else [],
            "excluded": [{"strategy": s, "reason": why} for s, why in c.excluded],
        } for c in b.cells]} for b in blocks],
    }
    if crossings is not None:
        out["crossovers"] = crossovers.to_json(*crossings)
    return out


def from_json(d: dict[str, Any]) -> tuple[list[Block], Constraints, tuple[list, list] | None]:
    blocks = [Block(b["caller"], [CellDecision(c["model"], int(c["batch"]), int(c["threads"]), c.get("malloc", ""),
                                               [Ranked(**r) for r in c["eligible"]],
                                               [(e["strategy"], e["reason"]) for e in c["excluded"]])
                                  for c in b["cells"]]) for b in d["blocks"]]
    crossings = crossovers.from_json(d["crossovers"]) if "crossovers" in d else None
    return blocks, Constraints.from_json(d.get("constraints")), crossings
