"""Turning a run's results into an HTML page (plots embedded) and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

from bench.results import RunDir


def render(run: RunDir, decision: dict | None = None) -> tuple[Path, Path]:
    """The run's report; ``decision`` replaces the run's own [decision] constraints (bench report --caller ...).
    Also writes decision.json into the run folder."""
    from reports.content import build
    from reports.html import render_html
    from reports.markdown import render_markdown

    report = build(run, decision)  # built once, rendered twice
    from plumbing.files import atomic_write_json

    atomic_write_json(run.path / "decision.json", report.decision)
    return render_html(run, report), render_markdown(run, report)
