"""``potstill report CONFIG``: measure latency/memory/cost and write report.md/html/json."""

from .. import api
from .common import add_config_args, show_report

HELP = "measure speed, memory and cost of each model and write the report (needs eval)"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP)
    add_config_args(p)
    p.set_defaults(func=main)


def main(args) -> int:
    report = api.report(args.config, args.overrides, args.force)
    show_report(report)
    return 0
