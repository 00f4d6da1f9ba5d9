"""``potstill run CONFIG``: the whole pipeline, skipping stages whose inputs did not change."""

from .. import api
from .common import add_config_args, show_report

HELP = (
    "run the whole pipeline: prompts → expand → generate → student → signals → train → eval → measure → route → report"
)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP)
    add_config_args(p)
    p.set_defaults(func=main)


def main(args) -> int:
    report = api.run(args.config, args.overrides, args.force)
    show_report(report)
    return 0
