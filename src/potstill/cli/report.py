"""``potstill report CONFIG``: measure latency/memory/cost and write report.md/html/json."""

from .. import api
from ..progress import say
from .common import add_config_args

HELP = "measure speed, memory and cost of each model and write the report (needs eval)"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP)
    add_config_args(p)
    p.set_defaults(func=main)


def main(args) -> int:
    report = api.report(args.config, args.overrides, args.force)
    from ..report import print_summary_table

    print_summary_table(report)
    say("report: done")
    return 0
