"""The report as one self-contained HTML page (``report.html``): inline CSS, images as data URIs."""

from __future__ import annotations

import base64
from html import escape

from .markdown import header_lines
from .sections import all_tables, make_plots
from .tables import Table, warning_lines

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.summary { font-size: 1.1em; background: #f4f8fb; padding: 0.8em 1em; border-left: 4px solid #1f4e79; }
.context { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; white-space: nowrap; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; }
.warnings { background: #fff4e5; border-left: 4px solid #d9822b; padding: 0.5em 1em; }
.warnings li { margin: 0.2em 0; }
.notes { color: #555; font-size: 0.9em; }
"""


def html_table(table: Table) -> str:
    """A titled HTML table; every cell is escaped."""
    numeric = table.numeric or [False] * len(table.headers)
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{escape(c)}</td>' if n else f"<td>{escape(c)}</td>" for c, n in zip(row, numeric))
        + "</tr>\n"
        for row in table.rows
    )
    note = f"<p>{escape(table.note)}</p>" if table.note else ""
    return (
        f'<h2>{escape(table.title)}</h2>\n<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}</tbody></table></div>\n{note}"
    )


def html_figure(title: str, png: bytes) -> str:
    """An embedded PNG with its caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(title)}">'
        f"<figcaption>{escape(title)}</figcaption></figure>"
    )


def render_html(report: dict) -> str:
    """The whole report as HTML: summary, tables and figures, with no external resources."""
    title, summary, context = header_lines(report)
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="summary">{escape(summary)}</p>',
        f'<p class="context">{escape(context)}</p>',
    ]
    warnings = warning_lines(report)
    if warnings:
        parts.append(
            '<h2>Warnings</h2>\n<div class="warnings" id="warnings"><ul>'
            + "".join(f"<li>{escape(w)}</li>" for w in warnings)
            + "</ul></div>"
        )
    parts += [html_table(t) for t in all_tables(report)]
    notes = [str(n) for n in (report.get("notes") or [])]
    if notes:
        parts.append('<h2>Notes</h2>\n<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    figures = make_plots(report)
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [html_figure(t, png) for t, png in figures]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
