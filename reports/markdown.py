"""A Markdown summary fit to paste into an architecture review; plots saved beside it as PNG."""

from __future__ import annotations

from pathlib import Path

from bench.results import RunDir
from bench.sections import Table
from plumbing.files import atomic_write_text
from reports.content import Report, build

MAX_ROWS = 40


def _table(t: Table) -> list[str]:
    esc = [[(v or "").replace("|", "\\|") for v in row] for row in t.rows]
    lines = [f"**{t.title}**", ""] if t.title else []
    lines += ["| " + " | ".join(t.columns) + " |", "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[:MAX_ROWS]]
    if len(esc) > MAX_ROWS:
        lines.append(f"\n_{len(esc) - MAX_ROWS} more rows in report.html_")
    return lines + [""]


def to_markdown(r: Report, figure_dir: str = "report_files") -> str:
    out = [f"# {r.title}", "", f"_{r.subtitle}_", ""]
    out += [f"> **Warning:** {w}" + "\n" for w in r.warnings]
    for s in r.sections:
        if not s.in_markdown:
            continue
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for f in s.figures:
            out += [f"![{f.caption or f.name}]({figure_dir}/{f.name}.png)", ""]
        for t in s.tables:
            out += _table(t)
    return "\n".join(out)


def render_markdown(run: RunDir, report: Report | None = None) -> Path:
    report = report or build(run)
    figs = run.path / "report_files"
    figs.mkdir(exist_ok=True)
    for s in report.sections:
        for f in s.figures:
            (figs / f"{f.name}.png").write_bytes(f.png)
    path = run.path / "report.md"
    atomic_write_text(path, to_markdown(report))
    return path
