"""The report's tables and figures in display order (what the Markdown and HTML renderers show)."""

from __future__ import annotations

from .engines import engines_table
from .plots import break_even_plot, category_bars, ci_plot, latency_plot, quality_vs_cost, score_bars
from .routing import routing_plot, routing_table
from .tables import (
    Table,
    agreement_table,
    category_tables,
    ci_tables,
    contamination_table,
    cost_table,
    judge_table,
    models_table,
    pair_tables,
    scorers_table,
    split_label,
    students_table,
    training_table,
)


def all_tables(report: dict) -> list[Table]:
    """Every table of the report, in display order."""
    tables = [
        models_table(report),
        students_table(report),
        *ci_tables(report),
        *pair_tables(report),
        *category_tables(report),
        agreement_table(report),
        scorers_table(report),
        judge_table(report),
        contamination_table(report),
        cost_table(report),
        engines_table(report),
        routing_table(report),
        training_table(report),
    ]
    return [t for t in tables if t is not None]


def make_plots(report: dict) -> list[tuple[str, bytes]]:
    """Every figure of the report as ``(title, png_bytes)``, in display order."""
    figures = [
        ("Quality vs cost per query", quality_vs_cost(report)),
        ("Score per split (95% confidence intervals)", score_bars(report)),
        ("Difference to the teacher with 95% confidence intervals", ci_plot(report)),
        ("Latency distribution (batch 1)", latency_plot(report)),
        ("Break-even: cumulative cost, from the run's measured costs", break_even_plot(report)),
        ("Routing curve: blended quality vs teacher share (dot: calibrated threshold)", routing_plot(report)),
    ]
    figures += [(f"Per-category score ({split_label(s)})", category_bars(report, s)) for s in report["splits"]]
    return [(title, png) for title, png in figures if png is not None]
