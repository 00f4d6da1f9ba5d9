"""The report as Markdown (``report.md``)."""

from __future__ import annotations

import html

from .sections import all_tables
from .tables import Table, warning_lines


def md_escape(text: str) -> str:
    """Make text safe inside a Markdown table cell (pipes, newlines and raw HTML)."""
    return html.escape(str(text), quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    """A titled GitHub-flavoured Markdown table (numeric columns right-aligned)."""
    numeric = table.numeric or [False] * len(table.headers)
    lines = [
        f"## {md_escape(table.title)}",
        "",
        "| " + " | ".join(md_escape(h) for h in table.headers) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", md_escape(table.note)]
    return "\n".join(lines)


def header_lines(report: dict) -> list[str]:
    """Title and summary lines shared by the Markdown and HTML reports: (title, summary, context)."""
    title = f"potstill report: {report.get('name') or 'run'}"
    context = []
    if report.get("teacher") or report.get("student"):
        context.append(f"Teacher: {report.get('teacher') or 'n/a'}; student: {report.get('student') or 'n/a'}.")
    if report.get("scorer"):
        sizes = ", ".join(f"{s}: {n} prompts" for s, n in (report.get("split_sizes") or {}).items() if n is not None)
        context.append(f"Quality scorer: {report['scorer']}" + (f" ({sizes})." if sizes else "."))
    context.append(f"Measured on: {report.get('machine') or 'n/a'}.")
    return [title, report.get("summary") or "", " ".join(context)]


def render_markdown(report: dict) -> str:
    """The whole report as Markdown: title, summary, tables, machine line."""
    title, summary, context = header_lines(report)
    parts = [f"# {md_escape(title)}", md_escape(summary), md_escape(context)]
    warnings = warning_lines(report)
    if warnings:
        parts.append("## Warnings\n\n" + "\n".join(f"- **warning**: {md_escape(w)}" for w in warnings))
    parts += [md_table(t) for t in all_tables(report)]
    notes = [str(n) for n in (report.get("notes") or [])]
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {md_escape(n)}" for n in notes))
    return "\n\n".join(p for p in parts if p) + "\n"
