"""The report's standing sections, one builder each, in the order the report shows them. A builder takes
the report's ``Inputs`` (reports.content) and returns its sections (none where it has nothing to show);
adding a section is adding a function here."""

from __future__ import annotations

from reports.sections import decision, performance, run
from reports.sections.run import run_warnings

SECTIONS = [
    decision.by_caller, decision.scorecard, decision.crossovers, decision.every_route, decision.claims, decision.ranking,
    run.scenario_parts,
    performance.latency, performance.throughput, performance.overhead, performance.payload, performance.memory,
    performance.cold_start, performance.breakdown,
    run.artifacts, run.correctness, run.errors, run.environment,
]

__all__ = ["SECTIONS", "run_warnings"]
