"""A self-contained HTML page: plots embedded as base64 PNG, no external assets."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from bench.results import RunDir
from bench.sections import Section, Table
from plumbing.files import atomic_write_text
from reports.content import Report, build

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;padding-top:10px;border-top:1px solid #e3e6ea}
.sub{color:#5b6472;margin-bottom:16px}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;margin:10px 0 18px;font-size:13px}nav a{color:#2f5d9e;text-decoration:none}
.warn{background:#fff6e0;border-left:4px solid #e0a400;padding:8px 12px;margin:6px 0;border-radius:3px}
table{border-collapse:collapse;margin:10px 0 16px;font-size:12.5px;width:auto}
th,td{padding:4px 9px;border-bottom:1px solid #e6e8eb;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fde8e8}
.scroll{max-height:440px;overflow:auto;border:1px solid #eceef1;border-radius:4px;display:inline-block;max-width:100%}
.wide{overflow-x:auto;max-width:100%}
figure{margin:12px 0 18px}figure img{max-width:100%;border:1px solid #eceef1;border-radius:4px}
figcaption{color:#5b6472;font-size:12.5px}
caption{text-align:left;font-weight:600;padding:8px 0 4px;font-size:13.5px}
details{margin:6px 0}pre{background:#f4f5f7;padding:8px;overflow:auto;font-size:12px}
p{margin:6px 0;max-width:960px}
"""

_NUMERIC = re.compile(r"^[-+±]?[\d,.]+\s*(µs|ms|s|x|%|MiB|GB/s|KiB|GiB|B)?$")


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for i, row in enumerate(t.rows):
        cells = "".join(f"<td class=num>{html.escape(v)}</td>" if t.align_numbers and _NUMERIC.match(v or "") else f"<td>{html.escape(v)}</td>"
                        for v in row)
        body.append(f"<tr{' class=bad' if i in t.bad_rows else ''}>{cells}</tr>")
    wrap = len(t.rows) > 14 and t.scroll
    cap = f"<caption>{html.escape(t.title)}</caption>" if t.title else ""
    table = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    # a wide table scrolls inside its own box rather than pushing the whole page sideways
    return f"<div class=scroll>{table}</div>" if wrap else f"<div class=wide>{table}</div>"


def _section(s: Section) -> str:
    parts = [f"<section id={s.id}><h2>{html.escape(s.title)}</h2>"]
    parts += [f"<p>{_inline(p)}</p>" for p in s.text]
    for f in s.figures:
        b64 = base64.b64encode(f.png).decode()
        cap = f"<figcaption>{_inline(f.caption)}</figcaption>" if f.caption else ""
        parts.append(f"<figure><img alt='{html.escape(f.name)}' src='data:image/png;base64,{b64}'>{cap}</figure>")
    parts += [_table(t) for t in s.tables]
    parts += [f"<details><summary>{html.escape(k)}</summary><pre>{html.escape(v)}</pre></details>" for k, v in s.details]
    parts.append("</section>")
    return "\n".join(parts)


def to_html(r: Report) -> str:
    nav = "".join(f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in r.sections)
    warns = "".join(f"<div class=warn>{_inline(w)}</div>" for w in r.warnings)
    body = "\n".join(_section(s) for s in r.sections)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(r.title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>"
            f"<h1>{html.escape(r.title)}</h1><div class=sub>{html.escape(r.subtitle)}</div><nav>{nav}</nav>{warns}"
            f"{body}</main></body></html>")


def render_html(run: RunDir, report: Report | None = None) -> Path:
    report = report or build(run)
    path = run.path / "report.html"
    atomic_write_text(path, to_html(report))
    return path
