"""The report: what a run's sections are built from, gathered once (``Inputs``), and the builders that
make them, in order (``reports.sections.SECTIONS``). Each builder is a small function of the typed cells,
their summary frame and the decision; adding a section is adding a function to that list. The content
model (``Section``, ``Table``, ``Figure``, ``Curve``) is ``bench.sections``, which scenarios emit too."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pandas as pd

from bench import allocator, record, rematch
from bench.record import CellResult
from bench.results import RunDir, summary_frame
from bench.sections import Curve, Figure, Section, Table
from reports import crossovers, plots
from reports.decision import Block, Capacity, Constraints, decide
from reports.decision import to_json as decision_json
from reports.tables import BASELINE, main_cells, payload_fits
from strategies.base import RouteFacts, RouteTable, base_name

__all__ = ["Figure", "Inputs", "Report", "Section", "Table", "build", "gather"]


@dataclass
class Report:
    title: str
    subtitle: str
    warnings: list[str]
    sections: list[Section]
    decision: dict[str, Any] = field(default_factory=dict)  # decision.json


@dataclass
class Inputs:
    """Everything a section is built from, read and derived once per report."""

    run: RunDir
    meta: dict[str, Any]
    env: dict[str, Any]
    cfg: dict[str, Any]
    cells: list[CellResult]  # the cells, each one's parts (length buckets) inside it
    rows: list[CellResult]  # the cells and, after each, its parts as rows of their own
    frame: pd.DataFrame  # summary.csv: a row per cell and per part
    standing: set[str]  # the scenarios whose cells feed the standing sections
    results: list[CellResult]  # the rows of those scenarios (of the first allocator policy, where several ran)
    df_all: pd.DataFrame  # their summary rows, every policy
    df: pd.DataFrame  # their summary rows, the first policy
    policies: list[str]  # the allocator policies compared ([] when the run has one)
    cmap: dict[str, str]  # a colour per strategy, the same in every figure
    facts: RouteTable  # what each strategy is (languages, Python at deployment, artifact)
    constraints: Constraints
    blocks: list[Block]  # the decision, per caller language
    capacity: dict[tuple[str, int, int, str, str], Capacity]  # the slo scenario's answers
    fits: dict[str, Any]  # the payload sweep's cost fit per strategy
    crossing: tuple[list[crossovers.PayloadCrossover], list[crossovers.Switch]]
    sessions: dict[str, dict[str, Any]]  # what each strategy said of its session
    per_model: dict[tuple[str, str], dict[str, Any]]  # (model, strategy) -> facts that depend on the model
    interleaved: bool = False  # its latency cells were measured in interleaved rounds (bench.rounds)

    @property
    def valid(self) -> pd.DataFrame:
        return self.df[self.df.valid]

    @property
    def main(self) -> pd.DataFrame:
        return main_cells(self.df)

    @property
    def main_valid(self) -> pd.DataFrame:
        main = self.main
        return main[main.valid]

    @property
    def frame_cells(self) -> pd.DataFrame:
        """summary.csv's rows of cells (not of their parts)."""
        return self.frame[self.frame.cell_id.isin({r.id for r in self.cells})]


def gather(run: RunDir, decision: dict[str, Any] | None = None) -> Inputs:
    from bench import scenarios

    meta = run.meta()
    cfg = meta.get("config", {})
    cells = run.load_cells(samples=True)
    rows = record.with_parts(cells)
    frame = summary_frame(cells, run.id)  # from the cells just read, not by reading every file again
    with contextlib.suppress(Exception):  # a plugin gone since the run: its cells still show in the tables
        scenarios.discover(cfg.get("plugins") or [])
    standing = {n for n in scenarios.names() if scenarios.get(n).fixed_sections}
    results = [r for r in rows if r.cell.scenario in standing]
    df_all = frame[frame.scenario.isin(standing)].reset_index(drop=True)
    # Several allocator policies: the decision and the latency table show every one; the other
    # sections show the first (the run's primary policy), so each figure compares like with like.
    policies = list(allocator.of_run(cfg)) if len(allocator.of_run(cfg)) > 1 else []
    df = df_all
    if policies:
        df = df_all[df_all.malloc == policies[0]].reset_index(drop=True)
        results = [r for r in results if r.cell.malloc == policies[0]]
    sessions: dict[str, dict[str, Any]] = {}
    per_model: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.session:
            facts = dict(r.session)
            model_facts = facts.pop("per model", None)
            sessions.setdefault(r.cell.strategy, facts)
            if isinstance(model_facts, dict):
                per_model.setdefault((r.cell.model, r.cell.strategy), model_facts)
    constraints = Constraints.from_json(decision if decision is not None else cfg.get("decision"))
    facts = _strategy_facts(meta, set(df_all.strategy))
    capacity = _capacity(rows)
    blocks = decide(df_all, facts, constraints, capacity=capacity, rematch=rematch.load(run.path))
    fits = payload_fits(df)
    measured_max = {s: float(g.payload_bytes.max()) for s, g in df[df.model == "identity"].groupby("strategy")} \
        if "payload_bytes" in df else {}
    crossing = ([crossovers.payload_crossover(f, s, measured_max_bytes=measured_max.get(s)) for s, f in sorted(fits.items())],
                crossovers.ranking_switches(df, facts, constraints.tie_within))
    return Inputs(run, meta, meta.get("environment", {}), cfg, cells, rows, frame, standing, results, df_all, df,
                  policies, plots.colors(sorted(set(df.strategy)) or [BASELINE]), facts, constraints, blocks, capacity,
                  fits, crossing, sessions, per_model,
                  interleaved=any(r.sampling.get("method") == "rounds" for r in results))


def build(run: RunDir, decision: dict[str, Any] | None = None) -> Report:
    from reports.sections import SECTIONS, run_warnings

    x = gather(run, decision)
    sections = [_drawn(s, x.cmap) for builder in SECTIONS for s in builder(x)]
    started = x.meta.get("started")
    when = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started else "?"
    cells = x.frame_cells
    return Report(
        title="PyTorch integration strategies: benchmark report",
        subtitle=f"run {run.id} · {when} · {x.env.get('cpu_model', '?')} · {len(cells)} cells "
                 f"({int(cells.valid.sum())} valid) · profile {x.cfg.get('profile', '?')}",
        warnings=run_warnings(x), sections=sections,
        decision=decision_json(x.blocks, x.constraints, x.crossing),
    )


def _drawn(sec: Section, cmap: dict[str, str]) -> Section:
    """The section as the renderers take it: its curves (a scenario's figures, as data) drawn, its cells text."""
    tables = [replace(t, rows=[[str(v) for v in row] for row in t.rows]) for t in sec.tables]  # a scenario's numbers
    return replace(sec, tables=tables, figures=[Figure(f.name, plots.curve(f, cmap), f.caption) if isinstance(f, Curve)
                                                else f for f in sec.figures])


def _strategy_facts(meta: dict[str, Any], names: set[str]) -> RouteTable:
    """What each strategy is (languages, Python at deployment, artifact): as the run recorded it, else
    (a run from before it did) as the registry says now."""
    import strategies

    facts = RouteTable.from_json(meta.get("strategies"))
    for name in {base_name(n) for n in names} | set(strategies.names()):  # the rest: "not measured in this run"
        if name not in facts:
            try:
                facts[name] = strategies.get(name).facts()
            except Exception:  # a plugin strategy not loaded here: decided as a Python route
                facts[name] = RouteFacts()
    return facts


def _capacity(results: list[CellResult]) -> dict[tuple[str, int, int, str, str], Capacity]:
    """The slo scenario's answers by (model, batch, threads, allocator, strategy), for the decision."""
    out = {}
    for r in results:
        d, c = r.detail, r.cell
        if r.ok and "max_rps" in d and d.get("budget_s"):
            key = (c.model, c.batch, c.threads, c.malloc, c.strategy)
            out[key] = Capacity(d["max_rps"], d["budget_s"] * 1e3, bool(d.get("capped")))
    return out
