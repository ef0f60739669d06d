"""``payload``: the identity model (it returns its input) over payload sizes, one caller, so each
strategy's latency is the cost of getting the bytes there and back; the report fits it to
fixed cost + bytes / bandwidth."""

from __future__ import annotations

from typing import Any

from bench.record import Cell
from bench.scenarios import register
from bench.scenarios.base import Context, Measured, Scenario
from bench.scenarios.latency import Latency
from fixtures.builtin import IDENTITY_ROW_BYTES


@register
class Payload(Scenario):
    name = "payload"
    summary = "the identity model over payload sizes, one caller: what moving the bytes costs each strategy"
    legacy_ids = True
    fixed_sections = True

    def cells(self, cfg: Any, options: dict[str, Any]) -> list[Cell]:
        policies = cfg.malloc if len(cfg.malloc) > 1 else [""]
        return [Cell("identity", s, size // IDENTITY_ROW_BYTES, cfg.threads[0], 1, policy, self.name)
                for size in cfg.payload_sizes for policy in policies for s in cfg.payload_strategies]

    def measure(self, ctx: Context) -> Measured:
        return Latency().measure(ctx)
