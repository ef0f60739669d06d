"""The decision's sections: what each caller language should use, the scorecard per model, where the
answer changes, every route ranked, the common claims answered."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.sections import Section, Table
from reports import scorecard as cards
from reports.claims import answer as answer_claims
from reports.crossovers import FIXED_SHARE
from reports.decision import LANGUAGE_NAMES, NOT_MEASURED
from reports.tables import BASELINE, allocator_flips, decisions, fmt_ms, fmt_ratio, fmt_sig, fmt_tail

if TYPE_CHECKING:
    from reports.content import Inputs


def by_caller(x: Inputs) -> list[Section]:
    """What each language should use (the ties explained), and an at-a-glance table."""
    policies = bool(x.policies)
    sec = Section("caller", "Decision by caller language")
    if x.interleaved:
        sec.text.append("Per caller language, model and batch size, one caller: the fastest route that language can call "
                        f"(median latency), and what runs second. Constraints: {x.constraints.describe(True)}. Every "
                        "route was measured side by side with the others, opened together in warm worker processes "
                        "and timed in interleaved rounds (A B C, C B A, ...) so that drift on the machine hits them "
                        "alike; the *side by side* ratio of each round's medians orders them. `=` marks a tie with the first.")
    else:
        sec.text.append("Per caller language, model and batch size, one caller: the fastest route that language can call "
                        f"(median latency), and what runs second. Constraints: {x.constraints.describe()}. Where leads were "
                        "close, the contenders were measured again after the matrix, opened together in warm workers and "
                        "timed in alternating rounds (A B, B A, ...) so that drift on the machine hits them alike; that "
                        "*side by side* ratio orders them. `=` marks a tie with the first.")
    glance: dict[tuple[str, int, int, str], dict[str, str]] = {}
    for b in x.blocks:
        for c in b.cells:
            glance.setdefault((c.model, c.batch, c.threads, c.malloc), {})[b.caller] = c.short()
    if glance:
        callers = [b.caller for b in x.blocks]
        sec.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                + [LANGUAGE_NAMES[c].split(" (")[0] for c in callers],
                                [[m, str(bt), str(t)] + ([a] if policies else []) + [g.get(c, "-") for c in callers]
                                 for (m, bt, t, a), g in glance.items()], align_numbers=False, scroll=False,
                                title="At a glance: the fastest route each language can call (next: the runner-up's time)"))
    for b in x.blocks:
        who = LANGUAGE_NAMES[b.caller]
        for c in b.cells:
            if len(c.leaders) > 1 or any(r.paired_ratio for r in c.eligible):  # what needs words: ties, rematches
                sec.text.append(f"From {who}, {c.model} batch {c.batch}" + (f", {c.malloc}" if policies else "")
                                + f": {c.sentence()}.")
        unmeasured = sorted({s for c in b.cells for s, why in c.excluded if why == NOT_MEASURED})
        if unmeasured:
            sec.text.append(f"{who} routes not measured in this run: {', '.join(unmeasured)}.")
    return [sec]


def every_route(x: Inputs) -> list[Section]:
    """The full ranking behind the decision: per language, every route it can call, and the rest with reasons."""
    policies = bool(x.policies)
    every = Section("every-route", "Every route, by caller language")
    every.text.append("The full ranking behind the decision: per caller language, every route it can call, with p99, "
                      "the side-by-side ratio where close leads were measured again, and the rest with their reasons.")
    for b in x.blocks:
        who = LANGUAGE_NAMES[b.caller]
        cannot = sorted(n for n, f in x.facts.items() if not f.callable_from(b.caller))
        rows = []
        for c in b.cells:
            ranked = "; ".join(("= " if r.tie_with_first else "") + f"{r.strategy} {fmt_ms(r.p50_ms)}"
                               + (f" (p99 {fmt_ms(r.p99_ms)})" if r.p99_ms is not None else "")
                               + (f" [side by side {r.paired_ratio:.3f}x the first, 95% {r.paired_low:.3f}-{r.paired_high:.3f}]"
                                  if r.paired_ratio else "")
                               + (f" [{r.max_rps:,.0f}/s within the p99 budget]" if r.max_rps else "")
                               + (f" [{r.note}]" if r.note else "") for r in c.eligible) or "-"
            other = [f"{s}: {why}" for s, why in c.excluded
                     if x.facts.of(s).callable_from(b.caller) and why != NOT_MEASURED]
            rows.append([c.model, str(c.batch), str(c.threads)] + ([c.malloc] if policies else [])
                        + [ranked, "; ".join(other) or "-"])
        if cannot:
            every.text.append(f"A {who} application cannot call: {', '.join(cannot)}.")
        every.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                  + [f"{who}: ranked (p50)", "not ranked here, and why"], rows,
                                  title=f"{who}: every route, ranked"))
    return [every]


def scorecard(x: Inputs) -> list[Section]:
    """One screen per model: what a review asks first, fastest first."""
    sec = Section("scorecard", "Scorecard")
    for card in cards.cards(x.df, x.results, x.facts, x.capacity):
        sec.tables.append(Table(
            ["strategy", "p50", "p99", "best samples/s", "rate within p99 budget", "CPU/inference", "memory added",
             "ready (warm cache)", "Python at deployment", "artifact", "correct (max abs error)"],
            [[r.strategy, fmt_ms(r.p50_ms), fmt_tail(r.p99_ms) if r.p50_ms is not None else "-",
              f"{fmt_sig(r.throughput_sps)} ({r.throughput_callers} caller{'s' if r.throughput_callers != 1 else ''})"
              if r.throughput_sps else "-",
              f"{r.max_rps:,.0f}/s" if r.max_rps else ("not measured" if r.p50_ms is not None else "-"),
              fmt_ms(r.cpu_ms_per_inference), f"{r.mem_added_mb:,.0f} MiB" if r.mem_added_mb is not None else "-",
              fmt_ms(r.ready_s * 1e3) if r.ready_s is not None else "-",
              {True: "yes", False: "no", None: "-"}[r.python_at_deployment], r.artifact, r.correctness]
             for r in card.rows],
            bad_rows={i for i, r in enumerate(card.rows) if r.status != "ok"}, scroll=False,
            title=f"{card.model}, batch {card.batch}, {card.threads} thread{'s' if card.threads != 1 else ''}"
                  + (f", {x.policies[0]}" if x.policies else "")))
    if not sec.tables:
        return []
    sec.text.append("Per model, at its smallest batch: what a review asks first, fastest first. *best samples/s* "
                    "is the highest throughput over the caller counts measured; *rate within p99 budget* comes "
                    "from the slo scenario where it ran; *ready* is cold start from a warm artifact cache "
                    "(interpreter to first call). The sections below hold the details.")
    return [sec]


def crossovers(x: Inputs) -> list[Section]:
    """Where the answer changes: the payload size past which fixed cost stops mattering, the batch and caller
    counts at which another route takes the lead."""
    payload, switches = x.crossing
    sec = Section("crossovers", "Crossovers")
    sec.text.append("Where the answer changes, read off this run's measurements. Payload: above what size a route's "
                    f"fixed cost per call falls under {FIXED_SHARE:.0%} of the call (from the fit of the "
                    "identity model's payload sweep: latency = fixed + bytes x per-byte). Ranking: the batch size and "
                    "the number of callers at which another route a language can call takes the lead.")
    if payload:
        sec.tables.append(Table(["strategy", "fixed cost", "per MiB", f"fixed cost under {FIXED_SHARE:.0%} above"], [
            [p.strategy, fmt_ms(p.fixed_s * 1e3), fmt_ms(p.per_byte_s * 2**20 * 1e3) if p.per_byte_s else "nothing measurable",
             "never (no per-byte cost measured)" if p.bytes is None else
             _size(p.bytes) + ("" if p.inside_measured or p.measured_max_bytes is None
                               else f" (beyond the largest payload measured, {_size(p.measured_max_bytes)})")]
            for p in payload], title="Payload size", scroll=False))
    else:
        sec.text.append("Payload: not measured in this run (no payload sweep).")
    if switches:
        sec.tables.append(Table(["caller", "model", "axis", "what changes"],
                                [[LANGUAGE_NAMES[s.caller].split(" (")[0], s.model,
                                  "batch size" if s.axis == "batch" else "callers (throughput)", s.text()]
                                 for s in switches], align_numbers=False, title="Ranking"))
    else:
        sec.text.append("Ranking: no route a language can call takes the lead from another at any batch size or caller "
                        "count measured in this run.")
    return [sec]




def claims(x: Inputs) -> list[Section]:
    """The claims users arrive with, answered from this run."""
    sec = Section("claims", "The common claims, answered by this run")
    sec.text.append("What articles and answers say about each route, against this run's own cells (one caller; "
                    "ratios are medians over the model and batch cells both routes ran).")
    sec.tables.append(Table(["claim", "this run"], [[c.claim, c.answer] for c in answer_claims(x.df, x.fits)],
                            align_numbers=False))
    return [sec]


def ranking(x: Inputs) -> list[Section]:
    """Every strategy ranked by median latency per model and batch, against in-process torch."""
    policies, main_valid, fits = x.policies, x.main_valid, x.fits
    sec = Section("decision", "Every strategy ranked")
    decs = decisions(x.df_all)
    if decs:
        sec.text.append(
            "Per model and batch size, one caller: strategies ranked by median latency; the ratio is "
            "against in-process eager torch for the same cell (below 1.00x is faster than torch). "
            "Cells with wrong outputs are never ranked.")
        rows = []
        for d in decs:
            ranked = "; ".join(f"{s} {fmt_ms(p)}" + (f" ({fmt_ratio(r)})" if r is not None and s != BASELINE else "")
                               for s, p, r in d.ranking)
            rows.append([d.model, str(d.batch), str(d.threads)] + ([d.malloc] if policies else [])
                        + [d.winner or "-", fmt_ms(d.winner_p50_ms), fmt_ratio(d.margin) if d.margin else "-", ranked,
                           "; ".join(f"{s} ({why})" for s, why in d.excluded) or "-"])
        sec.tables.append(Table(["model", "batch", "threads"] + (["allocator"] if policies else [])
                                + ["winner", "winner p50", "lead over 2nd", "ranking (p50, vs torch)", "not ranked"], rows))
        if policies:
            flips = allocator_flips(decs)
            sec.text.append(f"Measured under {len(policies)} allocator policies ({', '.join(policies)}); the "
                            f"sections after this one show the first, {policies[0]}. "
                            + ("**Rankings that change with the allocator:** " + " ".join(f"{f}." for f in flips)
                               if flips else "No winner changes with the allocator."))
        sec.text.extend(f"{d.model}, batch {d.batch}" + (f", {d.malloc}" if policies else "") + f": {d.sentence()}."
                        for d in decs)
    conc = main_valid[main_valid.concurrency > 1]
    if len(conc):
        best = main_valid.loc[main_valid.groupby("model").throughput_sps.idxmax()]
        sec.text.append("Highest throughput per model over every batch size and caller count: " + "; ".join(
            f"{r.model}: **{r.strategy}** {fmt_sig(r.throughput_sps)} samples/s (batch {r.batch}, {r.concurrency} callers)"
            for r in best.itertuples()) + ".")
    if fits:
        sec.text.append("Marshaling (identity model): " + "; ".join(
            f"{s} costs {fmt_ms(f.fixed_s * 1e3)} per call + "
            + ("nothing measurable per byte" if math.isinf(f.bandwidth_Bps) else f"{fmt_ms(1e12 / f.bandwidth_Bps)} per GB ({f.bandwidth_text()})")
            for s, f in sorted(fits.items())) + ".")
    return [sec]


def _size(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{n:.0f} B"
