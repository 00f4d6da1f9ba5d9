"""The report stage: teacher vs students on quality, speed, memory and cost (JSON, Markdown, HTML).

``build_report(results, perf, costs, training, cfg_summary, out_dir)`` writes ``report.json``,
``report.md`` and ``report.html``; ``print_summary_table(report)`` prints the headline table.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from .build import assemble_report, build_report
from .tables import models_table, pair_line


def print_summary_table(report: dict, console=None) -> None:
    """Print the compact teacher-vs-students table, the summary sentence and the students compared with ``rich``."""

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or pipe: keep the table on one line per row
            console = Console(width=160)
    table = models_table(report, compact=True)
    rich_table = RichTable(title=f"potstill: {report.get('name') or 'run'}", title_justify="left")
    for i, (header, numeric) in enumerate(zip(table.headers, table.numeric)):
        widest = max((len(row[i]) for row in table.rows), default=1)  # cells stay whole; headers may wrap
        rich_table.add_column(
            header, justify="right" if numeric else "left", overflow="fold", min_width=min(widest, 30)
        )
    for row in table.rows:
        rich_table.add_row(*(Text(c) for c in row))  # Text: model names are never parsed as markup
    console.print(rich_table)
    if report.get("summary"):
        console.print(Text(report["summary"]))
    for split, pairs in (report.get("pairs") or {}).items():
        for pair in pairs:
            console.print(Text(f"Students compared: {pair_line(pair, split)}"))
    if report.get("machine"):
        console.print(Text(f"Measured on: {report['machine']}", style="dim"))


__all__ = ["assemble_report", "build_report", "print_summary_table"]
