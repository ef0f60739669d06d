"""The report's content as plain data: sections of paragraphs, tables and figures.

One model for every part of the report: a scenario's ``report`` hook returns a ``Section`` (its tables,
its curves as data), and the report's standing sections (``reports/sections``) build the same type,
with figures already drawn. ``reports/html.py`` and ``reports/markdown.py`` render it. It lives below
the report (imports run one way), so a scenario never imports the report to describe its part.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    bad_rows: set[int] = field(default_factory=set)  # highlighted (invalid, error)
    align_numbers: bool = True  # right-align numeric cells (not in key/value tables)
    title: str = ""  # a caption above the table, where a section holds several
    scroll: bool = True  # a long table scrolls in its own box (False: shown whole, e.g. the scorecard)


@dataclass
class Curve:
    """A line plot as data (the report draws it): one series per label, each a list of (x, y); an
    optional horizontal line."""

    name: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]]
    hline: float | None = None
    hline_label: str = ""
    log_y: bool = False
    y_seconds: bool = False  # y values are seconds (formatted as times)
    title: str = ""  # the figure's caption (default: "ylabel against xlabel")

    @property
    def caption(self) -> str:
        return self.title or f"{self.ylabel} against {self.xlabel}"


@dataclass
class Figure:
    """A drawn figure: PNG bytes and its caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs; **bold** and *italics* allowed
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure | Curve] = field(default_factory=list)  # a Curve is drawn when the report is built
    details: list[tuple[str, str]] = field(default_factory=list)  # (summary, preformatted text)
    in_markdown: bool = True
