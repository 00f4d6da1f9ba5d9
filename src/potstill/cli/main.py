"""``potstill``: the command-line root. Maps subcommand names to their modules.

User mistakes (:class:`potstill.errors.UserError`) print one line (one per problem when several were
found, e.g. every bad config key) and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import UserError
from . import capture, check, convert, demo, export, generate, report, route, run, serve, stages, terms, train, tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potstill", description="Distill a large teacher LLM into a small student.")
    parser.add_argument("--version", action="version", version=f"potstill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    demo.add_parser(sub)
    stages.add_parsers(sub)
    generate.add_parser(sub)
    capture.add_parser(sub)
    train.add_parser(sub)
    tune.add_parser(sub)
    report.add_parser(sub)
    route.add_parser(sub)
    serve.add_parser(sub)
    terms.add_parser(sub)
    check.add_parser(sub)
    convert.add_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        for line in str(e).split("\n"):
            print(f"potstill: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("potstill: interrupted; finished stages are kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
