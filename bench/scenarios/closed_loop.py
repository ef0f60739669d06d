"""``closed-loop``: N callers, each calling back to back for a fixed window (perf_analyzer's
concurrency mode): throughput under load and the latency each caller sees. A strategy whose callers
live in another runtime runs them there (``Session.run_load``)."""

from __future__ import annotations

from typing import Any

from bench.measure import closed_loop
from bench.record import Cell
from bench.scenarios import register
from bench.scenarios.base import Context, Measured, Metric, Scenario
from bench.scenarios.latency import main_grid

# identical reruns of several-caller cells moved 20-30% on a shared 2-vCPU VM
# (tests/benchmarks/compare_false_alarms.py), so 10% flagged one in eight
CONCURRENT_THRESHOLD = 0.30


@register
class ClosedLoop(Scenario):
    name = "closed-loop"
    summary = "N callers back to back for a fixed window: throughput and the latency under that load"
    legacy_ids = True
    fixed_sections = True
    metrics = (Metric("throughput_sps", "throughput", "higher", CONCURRENT_THRESHOLD, follows_latency=True),)
    latency_threshold = CONCURRENT_THRESHOLD

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        return main_grid(cfg, self.name, lambda n: n > 1)

    def measure(self, ctx: Context) -> Measured:
        n = ctx.cell.concurrency
        load = closed_loop(ctx.session, ctx.inputs, n, ctx.sampling.concurrency_s, ctx.sampling.warmup_s,
                           ctx.between_rounds, ctx.cpu)
        if load.errors:
            raise RuntimeError(f"concurrent call failed: {load.errors[0]}")
        if not load.calls:
            raise RuntimeError("no call completed during the concurrency window")
        return Measured(load.latency_ns, load.calls, load.wall_s,
                        {"converged": True, "rounds": 1, "wall_s": load.wall_s,
                         "stop_reason": f"{n} callers for {load.wall_s:.1f}s"},
                        cpu_s=load.cpu_s, cpu_by_role=load.cpu_by_role or {})
