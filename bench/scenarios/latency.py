"""``latency``: one caller, calls back to back, sampled adaptively until the median is stable
(bench.measure.sample). The matrix's single-caller cells: every model x batch x threads x strategy."""

from __future__ import annotations

from typing import Any

from bench.measure import sample
from bench.record import Cell
from bench.scenarios import register
from bench.scenarios.base import Context, Measured, Scenario


def main_grid(cfg: Any, scenario: str, keep: Any) -> list[Cell]:
    """The model x batch x threads x callers x allocator x strategy grid (strategies innermost, so the
    strategies compared in one row are measured next to each other in time), for the caller counts
    ``keep`` accepts; shared by the scenarios that measure the main models."""
    policies = cfg.malloc if len(cfg.malloc) > 1 else [""]  # one policy: the run's, not part of the cell
    return [Cell(model, s, batch, threads, conc, policy, scenario)
            for model in cfg.models for batch in cfg.batch_sizes for threads in cfg.threads
            for conc in cfg.concurrency if keep(conc) for policy in policies for s in cfg.strategies]


@register
class Latency(Scenario):
    name = "latency"
    summary = "one caller, calls back to back until the median is stable: latency, its tails and per-call phases"
    legacy_ids = True
    fixed_sections = True
    interleaved = True  # measure() serves [sampling] rounds = 0 only

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        return main_grid(cfg, self.name, lambda n: n == 1)

    def measure(self, ctx: Context) -> Measured:
        s = sample(ctx.session, ctx.inputs, ctx.sampling, ctx.per_call_s, ctx.between_rounds)
        lat = s.latency_ns
        return Measured(lat, len(lat), s.wall_s, {"converged": s.converged, "rounds": s.rounds, "wall_s": s.wall_s,
                                                   "stop_reason": s.stop_reason},
                        calls_per_s=len(lat) / (lat.sum() / 1e9), phases_ns=s.phases_ns)
