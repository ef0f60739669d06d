#!/usr/bin/env python3
"""Write the documentation's page of measured figures from one results folder.

    python docs/figures.py results/<run-id> > docs/figures.md
    python docs/figures.py results/<run-id> --out docs/figures.md [--note TEXT]

The page says what was run (the resolved config recorded in the folder's ``run.json``), from which
commit (``run.json`` -> ``environment`` -> ``git``), when and on what machine, then tables per model:
p50/p99 latency, throughput, memory, CPU and cold start per strategy, and, where the run measured
them, the payload sweep, latency by request length, the open-loop windows and the highest rate within
a p99 budget. Every figure comes from the folder's ``summary.csv`` (one row per cell and one per part
of a cell; its columns are ``bench.results.SUMMARY_COLUMNS`` and each scenario's own figures), read
with pandas. It imports nothing of the harness, so it reads a folder written by any release (and is
longer than a module of the harness would be for that: it repeats no code of the report, and keeps
every table of the page, each with its own column choice, in this one script).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

# the dimensions that tell two cells of one model and strategy apart, besides the scenario's point
DIMS = ("batch", "threads", "concurrency", "malloc")
NOT_RUN = {"error", "skipped", "invalid", "unsupported"}
MAIN_SCENARIOS = ("latency", "closed-loop")
KNOWN_SCENARIOS = ("latency", "closed-loop", "payload", "shapes", "open-loop", "slo")


# -- formatting -------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    """A finite float, or None (empty cells of summary.csv read as NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def sig3(x: float) -> str:
    """Three significant digits, trailing zeros kept: 1.20, 61.3, 396."""
    if x == 0:
        return "0"
    decimals = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def fmt_ms(v: Any) -> str:
    """A time given in ms, in the unit that reads best: 61.3 µs, 1.25 ms, 2.31 s."""
    ms = _num(v)
    if ms is None:
        return "-"
    if ms < 0.9995:
        return f"{sig3(ms * 1e3)} µs"
    if ms < 999.5:
        return f"{sig3(ms)} ms"
    return f"{sig3(ms / 1e3)} s"


def fmt_sig(v: Any, digits: int = 3) -> str:
    """A rate or count to three significant digits, thousands separated: 15,700."""
    x = _num(v)
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits - 1):
        return f"{round(x, digits - 1 - int(math.floor(math.log10(abs(x))))):,.0f}"
    return f"{x:.{digits}g}"


def fmt_mib(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "-"
    return f"{x:,.0f} MiB" if abs(x) >= 10 else f"{x:.1f} MiB"


def fmt_bytes(n: Any) -> str:
    x = _num(n)
    if x is None:
        return "-"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if x >= size:
            v = x / size
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{x:.0f} B"


def cell_text(text: Any, limit: int = 160) -> str:
    """Free text made safe for a Markdown table cell: one line, pipes escaped, cut to ``limit``."""
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    s = s.splitlines()[0] if s else ""
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*").replace("_", "\\_")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def code(s: Any) -> str:
    return f"`{s}`"


# -- reading the folder -----------------------------------------------------------------------------

def load(folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    meta_file, csv_file = folder / "run.json", folder / "summary.csv"
    if not meta_file.is_file():
        raise SystemExit(f"error: {folder} is not a results folder (no run.json)")
    if not csv_file.is_file():
        raise SystemExit(f"error: {folder} has no summary.csv (an unfinished run? `python -m bench report {folder}` "
                         "writes it)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {meta_file} is not valid JSON: {e}") from None
    df = pd.read_csv(csv_file, keep_default_na=False, na_values=[""])
    return meta, normalise(df)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns that folders of older releases lack, filled the way those releases meant them."""
    df = df.copy()
    for col, default in (("point", ""), ("malloc", ""), ("error", ""), ("status", "ok")):
        if col not in df:
            df[col] = default
        df[col] = [default if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[col]]
    if "scenario" not in df:  # before scenarios were named: identity was the sweep, several callers closed loop
        df["scenario"] = ["payload" if m == "identity" else "closed-loop" if int(c) > 1 else "latency"
                          for m, c in zip(df.model, df.concurrency)]
    df["scenario"] = df["scenario"].fillna("latency").astype(str)
    if "valid" not in df:
        df["valid"] = df.status == "ok"
    df["valid"] = df["valid"].astype(str).str.lower().isin(("true", "1"))
    for col in ("batch", "threads", "concurrency"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(1).astype(int)
    df["part"] = _parts(df)
    return df


def _parts(df: pd.DataFrame) -> list[bool]:
    """Which rows are parts of a cell (a length bucket): their point is another row's point plus ".sub"
    within the same model, strategy, scenario and dimensions."""
    points: dict[tuple, set[str]] = {}
    keys = [tuple(r) for r in df[["scenario", "model", "strategy", *DIMS]].itertuples(index=False)]
    for k, p in zip(keys, df.point):
        points.setdefault(k, set()).add(p)
    return [any(p.startswith(q + ".") for q in points[k] if q != p) for k, p in zip(keys, df.point)]


def col(row: Any, name: str) -> Any:
    return getattr(row, name, None)


def status_of(row: Any) -> str:
    """'' for a valid cell, else its status (the error's first line is listed apart)."""
    return "" if bool(row.valid) else (row.status or "not valid")


def shown(row: Any, figures: Any) -> str:
    """A table cell: empty where nothing was measured, the status of a cell that is not valid, else its figures."""
    if row is None:
        return ""
    return f"*{status_of(row)}*" if status_of(row) else figures(row)


# -- the page ---------------------------------------------------------------------------------------

def when(meta: dict[str, Any]) -> str:
    env = meta.get("environment") or {}
    started, finished = _num(meta.get("started")), _num(meta.get("finished"))
    if started:
        text = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    else:
        text = str(env.get("timestamp") or "an unrecorded date")
    if started and finished and finished > started:
        text += f", {(finished - started) / 60:.1f} minutes"
    return text


def produced(meta: dict[str, Any], df: pd.DataFrame, shown: str, note: str) -> list[str]:
    env = meta.get("environment") or {}
    cfg = meta.get("config") or {}
    git = env.get("git") or {}
    cells = df[~df.part]
    lines = ["# Measured figures", ""]
    profile = cfg.get("profile")
    if profile and profile != "default":
        lines += [f"> **A sample run, not the full matrix**: profile `{profile}`, {len(cells)} cells. For the figures "
                  "of a full run: `nox -s bench`, then `python docs/figures.py results/<run-id> --out docs/figures.md`.",
                  ""]
    if note:
        lines += [f"> {note}", ""]
    commit = git.get("commit")
    if commit:
        state = ("with uncommitted changes to tracked files, so the figures may not be the commit's"
                 if git.get("dirty") else "a clean working tree")
        src = f"commit `{commit}` (branch `{git.get('branch') or '?'}`, {state})"
    else:
        src = "a checkout whose git commit was not recorded"
    status = meta.get("status") or "unknown"
    valid = int(cells.valid.sum())
    lines += [
        f"Generated by `python docs/figures.py {shown}` from the results folder of run `{meta.get('run_id', '?')}`: "
        f"{src}, measured {when(meta)}; run status *{status}*; {len(cells)} cells, {valid} valid. "
        "Nothing on this page is typed by hand: every figure is read from the folder's `summary.csv`, and "
        "the settings and machine from its `run.json`.",
        "",
        "Figures drift with the machine, its load, the library versions and the code. They are one run on one "
        "machine, not a property of a route: read them beside the machine below, measure your own with "
        "`nox -s bench`, and compare two runs with `python -m bench compare BASE NEW`, which tests the "
        "difference, rather than against this page. What the figures have meant so far, in words, is in "
        "[Findings](findings.md); how each is measured, in [How it measures](method.md).",
        "",
        "Legend: *p50*, *p99*: median and 99th percentile latency of one call (a p99 is shown only where the "
        "samples bound it, else *n/e*); *samples/s*: completed calls x batch per second; *memory added*: steady "
        "RSS of every process the cell used, minus the worker's before the route opened; *cold start*: opening "
        "the session (with the model build, where the route builds the model in the cell) plus its first call, from a warm artifact cache, without the interpreter's "
        "start-up and the runtime's import, which the report's *ready* figure adds; † marks a noisy cell (IQR above 10% of "
        "its median). A cell that did not give valid figures shows its status, with its reason at the end.",
        "",
    ]
    return lines


def settings(meta: dict[str, Any], df: pd.DataFrame) -> list[str]:
    cfg = meta.get("config") or {}
    rows: list[list[str]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append([label, value if isinstance(value, str) else code(value)])

    add("profile", code(cfg.get("profile", "?")))
    add("models", ", ".join(cfg.get("models") or []))
    add("strategies", ", ".join(cfg.get("strategies") or []))
    add("batch sizes", ", ".join(str(b) for b in cfg.get("batch_sizes") or []))
    add("intra-op threads", ", ".join(str(b) for b in cfg.get("threads") or []))
    add("callers (concurrency)", ", ".join(str(b) for b in cfg.get("concurrency") or []))
    scen = cfg.get("scenarios") or sorted(set(df.scenario))
    if "payload" in scen or "scenarios" not in cfg:
        add("payload sweep (each way)", ", ".join(fmt_bytes(s) for s in cfg.get("payload_sizes") or []))
    add("scenarios", ", ".join(scen))
    for name, opts in (cfg.get("scenario_options") or {}).items():
        if opts:
            add(f"{name} options", ", ".join(f"{k}={v!r}" for k, v in opts.items() if v not in ("", None)))
    sampling = cfg.get("sampling") or {}
    add("sampling", ", ".join(f"{k}={v}" for k, v in sampling.items()))
    add("allocator policy", ", ".join(cfg.get("malloc") or ["default"]) if isinstance(cfg.get("malloc"), list)
        else str(cfg.get("malloc") or "default (not recorded)"))
    add("CPU pinning", ", ".join(str(c) for c in cfg["cpus"]) if cfg.get("cpus") else "none")
    add("seed", str(cfg.get("seed", "?")))
    add("decision constraints", ", ".join(f"{k}={v}" for k, v in (cfg.get("decision") or {}).items()))
    for name, values in (cfg.get("strategy_settings") or {}).items():
        add(f"[strategy.{name}]", ", ".join(f"{k}={v!r}" for k, v in values.items()))
    for name, spec in (cfg.get("custom_models") or {}).items():
        add(f"model {name}", f"factory `{spec.get('factory', '?')}`" if isinstance(spec, dict) else str(spec))
    add("plugins", ", ".join(cfg.get("plugins") or []))
    gen = meta.get("load_generator") or {}
    if gen.get("ceiling_rps"):
        add("open-loop generator's own ceiling", f"{fmt_sig(gen['ceiling_rps'])} requests/s")
    lines = ["## What was run", "",
             "The resolved configuration as `run.json` records it (profile, then config file, then flags; the "
             "command line itself is not recorded):", ""]
    return lines + table(["setting", "value"], rows)


def machine(meta: dict[str, Any]) -> list[str]:
    env = meta.get("environment") or {}
    cores = f"{env.get('logical_cores', '?')} logical, {env.get('physical_cores', '?')} physical"
    rows = [["CPU", cell_text(env.get("cpu_model") or "?")], ["cores", cores]]
    if env.get("cpu_mhz_max"):
        rows.append(["max clock", f"{env['cpu_mhz_max']} MHz"])
    if env.get("memory_gb"):
        rows.append(["memory", f"{env['memory_gb']} GiB"])
    rows.append(["OS", cell_text(env.get("os") or "?")])
    rows.append(["Python", f"{env.get('python', '?')} ({env.get('python_implementation', '?')})"])
    threads = {k: v for k, v in (env.get("thread_env") or {}).items() if v}
    rows.append(["thread variables", ", ".join(f"{k}={v}" for k, v in threads.items()) or "none set"])
    rows.append(["CI", "yes" if env.get("ci") else "no"])
    lines = ["## The machine", ""] + table(["", ""], rows)
    packages = {k: v for k, v in (env.get("packages") or {}).items() if v}
    if packages:
        lines += ["Package versions: " + ", ".join(f"{k} {v}" for k, v in packages.items()) + ".", ""]
    runtimes = env.get("strategy_runtimes") or {}
    if runtimes:
        lines += ["Each strategy's runtimes, as it reported them:", ""]
        lines += table(["strategy", "runtimes"], [[s, cell_text(", ".join(f"{k} {v}" for k, v in r.items()), 400)]
                                                  for s, r in runtimes.items()])
    return lines


def _combo_label(keys: tuple, varying: list[str]) -> str:
    parts = []
    for name, v in zip(DIMS, keys):
        if name not in varying:
            continue
        if name == "batch":
            parts.append(f"batch {v}")
        elif name == "threads":
            parts.append(f"{v} thread{'s' if v != 1 else ''}")
        elif name == "concurrency":
            parts.append(f"{v} caller{'s' if v != 1 else ''}")
        elif name == "malloc" and v:
            parts.append(str(v))
    return ", ".join(parts) or "all"


def _varying(rows: pd.DataFrame, always: tuple[str, ...] = ()) -> list[str]:
    return [d for d in DIMS if d in always or rows[d].nunique() > 1]


def _order(rows: pd.DataFrame, by: str = "p50_ms") -> list[str]:
    """Strategies fastest first by their first valid figure, then those with none, by name."""
    first = {}
    for r in rows.itertuples():
        v = _num(col(r, by))
        if r.valid and v is not None and r.strategy not in first:
            first[r.strategy] = v
    rest = sorted(set(rows.strategy) - set(first))
    return sorted(first, key=lambda s: first[s]) + rest


def _mark(row: Any, text: str) -> str:
    noisy = str(col(row, "noisy")).lower() in ("true", "1")
    return text + "†" if noisy and text != "-" else text


def latency_table(rows: pd.DataFrame) -> list[str]:
    rows = rows.sort_values(list(DIMS))
    varying = _varying(rows, ("batch",))
    combos = list(dict.fromkeys(tuple(r) for r in rows[list(DIMS)].itertuples(index=False)))
    by = {(r.strategy, tuple(getattr(r, d) for d in DIMS)): r for r in rows.itertuples()}
    body = []
    for s in _order(rows):
        line = [s]
        for k in combos:
            line.append(shown(by.get((s, k)), lambda r: _mark(r, fmt_ms(r.p50_ms)) + " / "
                              + (fmt_ms(r.p99_ms) if _num(col(r, "p99_ms")) is not None else "n/e")))
        body.append(line)
    return table(["strategy", *[f"{_combo_label(k, varying)}: p50 / p99" for k in combos]], body)


def throughput_table(rows: pd.DataFrame) -> list[str]:
    rows = rows.sort_values(list(DIMS))
    varying = _varying(rows, ("batch", "concurrency"))
    combos = list(dict.fromkeys(tuple(r) for r in rows[list(DIMS)].itertuples(index=False)))
    by = {(r.strategy, tuple(getattr(r, d) for d in DIMS)): r for r in rows.itertuples()}
    body = []
    for s in _order(rows.assign(neg=-pd.to_numeric(rows.throughput_sps, errors="coerce")), "neg"):
        line = [s]
        for k in combos:
            r = by.get((s, k))
            line.append(shown(r, lambda r: fmt_sig(r.throughput_sps)))
        body.append(line)
    return table(["strategy", *[f"{_combo_label(k, varying)}" for k in combos]], body)


def footprint_table(rows: pd.DataFrame) -> list[str]:
    """Memory, CPU and cold start per strategy, from its one-caller cell at the smallest batch (and the
    first thread count and allocator policy)."""
    first = rows.sort_values(list(DIMS)).iloc[0]
    sel = rows[(rows.batch == first.batch) & (rows.threads == first.threads) & (rows.concurrency == first.concurrency)
               & (rows.malloc == first.malloc)]
    body = []
    for s in _order(sel):
        r = next(sel[sel.strategy == s].itertuples())
        if status_of(r):
            body.append([s, f"*{status_of(r)}*", "", "", ""])
            continue
        body.append([s, fmt_mib(col(r, "mem_added_mb")), fmt_mib(col(r, "mem_peak_mb")),
                     fmt_ms(col(r, "cpu_ms_per_inference")), fmt_ms(col(r, "cold_start_ms"))])
    where = _combo_label((first.batch, first.threads, first.concurrency, first.malloc), ["batch", "threads", "concurrency", "malloc"])
    return [f"Memory, CPU and cold start, from each strategy's cell at {where}:", ""] + table(
        ["strategy", "memory added", "peak RSS", "CPU per inference", "cold start (open + first call)"], body)


def model_sections(df: pd.DataFrame) -> list[str]:
    lines: list[str] = []
    main = df[df.scenario.isin(MAIN_SCENARIOS) & ~df.part]
    for model in dict.fromkeys(main.model):
        m = main[main.model == model]
        lines += [f"## {model}", ""]
        one = m[m.scenario == "latency"]
        if len(one):
            lines += ["Latency at one caller (the `latency` scenario):", ""] + latency_table(one)
        lines += ["Throughput, samples/s (one caller: `latency`; several: `closed-loop`):", ""] + throughput_table(m)
        under_load = m[m.scenario == "closed-loop"]
        if len(under_load):
            lines += ["Latency under load (the `closed-loop` scenario), each caller's calls:", ""] + latency_table(under_load)
        lines += footprint_table(one if len(one) else m)
    return lines


def payload_section(df: pd.DataFrame) -> list[str]:
    rows = df[(df.scenario == "payload") & ~df.part].copy()
    if rows.empty:
        return []
    rows["each_way"] = pd.to_numeric(rows.get("payload_bytes"), errors="coerce") / 2
    sizes = sorted(set(rows.each_way.dropna()))
    by = {(r.strategy, r.each_way): r for r in rows.itertuples()}
    body = []
    for s in _order(rows.sort_values("each_way")):
        line = [s]
        for size in sizes:
            r = by.get((s, size))
            line.append(shown(r, lambda r: _mark(r, fmt_ms(r.p50_ms))))
        body.append(line)
    return ["## Moving the bytes: the payload sweep", "",
            "The `identity` model (it returns its input), one caller: median latency per payload size in each "
            "direction, so the figure is the route's cost of getting the bytes there and back.", ""] + table(
        ["strategy", *[fmt_bytes(s) for s in sizes]], body)


def shapes_section(df: pd.DataFrame) -> list[str]:
    sh = df[df.scenario == "shapes"]
    if sh.empty:
        return []
    lines = ["## Latency by request length (the `shapes` scenario)", "",
             "Median latency per length bucket of the first named dimension (every request's outputs checked "
             "against eager torch), and the median first call of a request whose shape the session had not seen.", ""]
    for model in dict.fromkeys(sh.model):
        m = sh[sh.model == model]
        cells, parts = m[~m.part], m[m.part]
        buckets = sorted(dict.fromkeys(parts.point), key=_bucket_key)
        body = []
        for s in _order(cells):
            c = next(cells[cells.strategy == s].itertuples())
            if status_of(c):
                body.append([s, f"*{status_of(c)}*", *[""] * len(buckets), ""])
                continue
            line = [s, _mark(c, fmt_ms(c.p50_ms))]
            for b in buckets:
                p = parts[(parts.strategy == s) & (parts.point == b) & (parts.batch == c.batch)
                          & (parts.threads == c.threads) & (parts.malloc == c.malloc)]
                line.append(fmt_ms(p.iloc[0].p50_ms) if len(p) else "")
            line.append(fmt_ms(col(c, "new_shape_first_ms")))
            body.append(line)
        label = ", ".join(sorted({f"{c.point or 'generated'}" for c in cells.itertuples()}))
        lines += [f"**{model}** (requests: {label})", ""]
        lines += table(["strategy", "all requests", *[_bucket_label(b) for b in buckets], "first call, new shape"], body)
    return lines


def _bucket_key(point: str) -> tuple:
    sub = point.rsplit(".", 1)[-1]
    digits = "".join(ch if ch.isdigit() else " " for ch in sub).split()
    return (int(digits[0]) if digits else 0, sub)


def _bucket_label(point: str) -> str:
    return point.split(".", 1)[1] if "." in point else point


def open_loop_section(df: pd.DataFrame) -> list[str]:
    ol = df[(df.scenario == "open-loop") & ~df.part]
    if ol.empty:
        return []
    body = []
    for r in ol.sort_values(["model", "strategy", "offered_rps" if "offered_rps" in ol else "point"]).itertuples():
        if status_of(r):
            body.append([r.model, r.strategy, r.point, f"*{status_of(r)}*", "", "", ""])
            continue
        late = _num(col(r, "late_fraction"))
        body.append([r.model, r.strategy, fmt_sig(col(r, "offered_rps")), fmt_sig(col(r, "achieved_rps")),
                     fmt_ms(r.p50_ms), fmt_ms(r.p99_ms) if _num(r.p99_ms) is not None else "n/e",
                     "-" if late is None else f"{late:.1%}"])
    return ["## Open loop: latency against offered rate", "",
            "Requests arrive on a schedule whatever the route is doing; latency is timed from each request's "
            "scheduled arrival.", ""] + table(
        ["model", "strategy", "offered /s", "achieved /s", "p50 (arrival)", "p99 (arrival)", "sent over 1 ms late"], body)


def slo_section(df: pd.DataFrame, cfg: dict[str, Any]) -> list[str]:
    slo = df[(df.scenario == "slo") & ~df.part]
    if slo.empty:
        return []
    models = list(dict.fromkeys(slo.model))
    by = {(r.model, r.strategy): r for r in slo.itertuples()}
    rate = slo.assign(neg=-pd.to_numeric(slo.get("max_rps_within_slo"), errors="coerce"))
    body = []
    for s in _order(rate, "neg"):
        line = [s]
        for m in models:
            line.append(shown(by.get((m, s)), lambda r: f"{fmt_sig(col(r, 'max_rps_within_slo'))}/s, "
                              f"{fmt_ms(col(r, 'cpu_ms_per_inference'))} CPU"))
        body.append(line)
    budget = _num(((cfg.get("scenario_options") or {}).get("slo") or {}).get("p99"))  # seconds
    within = f"p99 {budget * 1e3:g} ms" if budget else "the p99 budget"
    return [f"## The service question: the highest rate within {within}", "",
            "Per route and model: the highest arrival rate whose p99, timed from each request's scheduled "
            f"arrival, stayed within {within} (the `slo` scenario), and the CPU time per inference of every "
            "process the route uses at that rate.", ""] + table(["strategy", *models], body)


def other_sections(df: pd.DataFrame) -> list[str]:
    rest = df[~df.scenario.isin(KNOWN_SCENARIOS) & ~df.part]
    if rest.empty:
        return []
    body = [[r.scenario, r.model, r.strategy, r.point or "-", f"*{status_of(r)}*" if status_of(r) else
             fmt_ms(r.p50_ms), "" if status_of(r) else fmt_ms(r.p99_ms) if _num(r.p99_ms) is not None else "n/e"]
            for r in rest.sort_values(["scenario", "model", "strategy"]).itertuples()]
    return ["## Other scenarios", ""] + table(["scenario", "model", "strategy", "point", "p50", "p99"], body)


def failures(df: pd.DataFrame) -> list[str]:
    bad = df[~df.valid & ~df.part]
    if bad.empty:
        return ["Every cell gave valid figures.", ""]
    body = [[code(r.cell_id), r.status, cell_text(r.error)] for r in bad.itertuples()]
    return ["## Cells without valid figures", ""] + table(["cell", "status", "why (first line)"], body)


def page(folder: Path, shown: str, note: str = "") -> str:
    meta, df = load(folder)
    lines = produced(meta, df, shown, note)
    lines += settings(meta, df)
    lines += machine(meta)
    lines += model_sections(df)
    lines += payload_section(df)
    lines += shapes_section(df)
    lines += open_loop_section(df)
    lines += slo_section(df, meta.get("config") or {})
    lines += other_sections(df)
    lines += failures(df)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a results folder, e.g. results/<run-id>")
    ap.add_argument("--out", type=Path, help="write the page here instead of to standard output")
    ap.add_argument("--note", default="", help="a line to put at the top of the page (e.g. why this run)")
    args = ap.parse_args(argv)
    folder = args.folder
    try:
        shown = os.path.relpath(folder.resolve(), Path.cwd())
        if shown.startswith(".."):
            shown = str(folder)
    except ValueError:
        shown = str(folder)
    text = page(folder, shown, args.note)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
