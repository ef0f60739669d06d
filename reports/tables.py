"""Tables derived from a run's tidy summary: the decision summary, the payload cost fits, and the
terminal table. HTML and Markdown both render these, so the two never disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.constraints import DEFAULT_TIE_WITHIN
from bench.stats import CostFit, fit_cost

BASELINE = "torch"


def fmt_ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v < 1:
        return f"{v * 1e3:.1f} µs"
    if v < 1000:
        return f"{v:.2f} ms"
    return f"{v / 1e3:.2f} s"


def fmt_tail(v: float | None) -> str:
    """A tail percentile in ms, or "n/e" where the samples could not bound it."""
    return "n/e" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt_ms(v)


def fmt_ratio(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}x"


def fmt_sig(v: float | None, digits: int = 3) -> str:
    """A rate to ``digits`` significant figures, grouped: 8,290,000 rather than 8,292,590.575."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    rounded = round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{rounded:,.{max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))}f}"


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def main_cells(df: pd.DataFrame, payload_models: tuple[str, ...] = ("identity",)) -> pd.DataFrame:
    return df[~df.model.isin(payload_models)]


@dataclass
class Decision:
    model: str
    batch: int
    threads: int
    malloc: str
    winner: str | None
    winner_p50_ms: float | None
    baseline_p50_ms: float | None
    runner_up: str | None
    margin: float | None  # runner-up p50 / winner p50
    ranking: list[tuple[str, float, float | None]]  # (strategy, p50_ms, vs torch), valid cells only
    excluded: list[tuple[str, str]]  # (strategy, why not ranked)
    noisy: list[str]

    def sentence(self) -> str:
        if not self.winner:
            return "no valid cell"
        tie = bool(self.runner_up and self.margin and self.margin < 1 + DEFAULT_TIE_WITHIN)
        if tie:
            parts = [f"**{self.winner}** and **{self.runner_up}** tie at {fmt_ms(self.winner_p50_ms)} p50 "
                     f"(a lead of {self.margin - 1:.1%} is within run-to-run drift)"]
        else:
            parts = [f"**{self.winner}** wins at {fmt_ms(self.winner_p50_ms)} p50"]
        if self.winner != BASELINE and self.baseline_p50_ms:
            parts.append(f"{fmt_ratio(self.winner_p50_ms / self.baseline_p50_ms)} in-process torch's time")
        if self.runner_up and self.margin and not tie:
            parts.append(f"the runner-up, {self.runner_up}, takes {fmt_ratio(self.margin)} its time")
        return ", ".join(parts)


def decisions(df: pd.DataFrame) -> list[Decision]:
    """Per model, batch size and thread count, at one caller: strategies ranked by median latency.
    Cells with wrong outputs, errors or skips are never ranked; they are listed with the reason."""
    out = []
    single = main_cells(df)
    single = single[single.concurrency == single.concurrency.min()] if not single.empty else single
    for (model, batch, threads, malloc), g in single.groupby(["model", "batch", "threads", "malloc"], sort=True):
        valid = g[g.valid & g.p50_ms.notna()].sort_values("p50_ms")
        ranking = [(r.strategy, r.p50_ms, r.vs_torch_p50 if pd.notna(r.vs_torch_p50) else None)
                   for r in valid.itertuples()]
        excluded = [(r.strategy, f"{r.status}: {str(r.error).splitlines()[0][:120] if r.error else ''}")
                    for r in g[~g.valid].itertuples()]
        base = valid[valid.strategy == BASELINE].p50_ms
        out.append(Decision(
            model, int(batch), int(threads), str(malloc),
            ranking[0][0] if ranking else None, ranking[0][1] if ranking else None,
            float(base.iloc[0]) if len(base) else None,
            ranking[1][0] if len(ranking) > 1 else None,
            ranking[1][1] / ranking[0][1] if len(ranking) > 1 else None,
            ranking, excluded, list(valid[valid.noisy == True].strategy),  # noqa: E712
        ))
    return out


def allocator_flips(decs: list[Decision]) -> list[str]:
    """Where a run compared allocator policies: each model and batch size whose winner changes with
    the policy, as one sentence naming the winner under each."""
    by_cell: dict[tuple[str, int, int], list[Decision]] = {}
    for d in decs:
        if d.malloc and d.winner:
            by_cell.setdefault((d.model, d.batch, d.threads), []).append(d)
    out = []
    for (model, batch, threads), ds in by_cell.items():
        if len({d.winner for d in ds}) > 1:
            out.append(f"{model}, batch {batch}, {threads} thread(s): the winner depends on the allocator: "
                       + "; ".join(f"under {d.malloc} **{d.winner}** ({fmt_ms(d.winner_p50_ms)})" for d in ds))
    return out


def payload_fits(df: pd.DataFrame) -> dict[str, CostFit]:
    """Per strategy, latency = fixed + bytes/bandwidth over the identity sweep (single caller)."""
    fits = {}
    ident = df[(df.model == "identity") & df.valid & (df.concurrency == 1) & df.p50_ms.notna()]
    for strategy, g in ident.groupby("strategy"):
        if g.payload_bytes.nunique() >= 2:
            fits[strategy] = fit_cost(g.payload_bytes.to_numpy(float), g.p50_ms.to_numpy(float) / 1e3)
    return fits


def terminal_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no cells)"
    policies = (df.malloc != "").any() if "malloc" in df else False
    w = max(14, *(len(str(s)) for s in df.strategy))  # variants (clr-onnxruntime@mono) are long names
    header = f"{'model':<12} {'strategy':<{w}} {'batch':>6} {'thr':>3} {'conc':>4} " + (f"{'malloc':<9}" if policies else "") \
        + f"{'p50':>10} {'p99':>10} {'samples/s':>11} {'vs torch':>8} {'mem +MiB':>8}  status"
    lines = [header, "-" * len(header)]
    prev = None
    for r in df.itertuples():
        group = (r.model, r.batch, r.threads, r.concurrency)
        if prev is not None and group[:1] != prev[:1]:
            lines.append("")
        prev = group
        status = r.status if r.status != "ok" else ("ok (noisy)" if r.noisy else "ok")
        if r.status in ("error", "skipped", "invalid", "unsupported") and r.error:
            status += ": " + str(r.error).splitlines()[0][:60]
        lines.append(
            f"{r.model:<12} {r.strategy:<{w}} {r.batch:>6} {r.threads:>3} {r.concurrency:>4} "
            + (f"{r.malloc:<9}" if policies else "") + f"{fmt_ms(r.p50_ms):>10} {fmt_ms(r.p99_ms) if pd.notna(r.p99_ms) else 'n/e':>10} {fmt_sig(r.throughput_sps):>11} "
            f"{fmt_ratio(r.vs_torch_p50):>8} {fmt_num(r.mem_added_mb, 1):>8}  {status}"
        )
    return "\n".join(lines)
