"""Arguments shared by the subcommands that read a run config."""

from __future__ import annotations

import argparse

from ..progress import say
from ..report import print_summary_table


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the run's YAML config file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=1e-4 eval.splits=[test]",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo STAGE even if its inputs did not change (repeatable): prompts, expand, generate, "
        "student, signals, train, eval, measure, route, report",
    )


def show_report(report: dict, prefix: str = "") -> None:
    """Print the teacher-vs-students table and where the report files are."""

    print_summary_table(report)
    paths = report.get("paths", {})
    say(f"{prefix}report: {paths.get('html')} (and {paths.get('md')}, {paths.get('json')})")
