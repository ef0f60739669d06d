"""Turning a run's results into an HTML page (plots embedded) and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

from bench.results import RunDir


def render(run: RunDir) -> tuple[Path, Path]:
    from reports.content import build
    from reports.html import render_html
    from reports.markdown import render_markdown

    report = build(run)  # built once, rendered twice
    return render_html(run, report), render_markdown(run, report)
