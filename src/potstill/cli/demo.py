"""``potstill demo``: the whole pipeline on the offline helpdesk example (teacher shipped in the repo)."""

from __future__ import annotations

import time
from pathlib import Path

from .. import api
from ..config import load_config
from ..errors import UserError
from .common import show_report

HELP = "distill the shipped helpdesk teacher into SFT and KD students, offline, and report"


def example_dir() -> Path:
    """``examples/helpdesk`` of the source checkout potstill runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "examples" / "helpdesk" / "config.yaml"
        if cand.is_file():
            return cand.parent
    raise UserError(
        "the helpdesk example was not found: run the demo from a potstill source checkout (pip install -e .)"
    )


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.epochs=1")
    p.add_argument(
        "--run-dir", default=None, help="where to write the run (default: runs/helpdesk-demo in the current directory)"
    )
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo STAGE (repeatable)")
    p.set_defaults(func=main)


def main(args) -> int:
    config = example_dir() / "config.yaml"
    run_dir = Path(args.run_dir or "runs/helpdesk-demo").resolve()
    cfg = load_config(config, [*args.overrides, f"run_dir={run_dir}"])
    started = time.perf_counter()
    report = api.run(cfg, force=args.force)
    show_report(report, prefix=f"demo finished in {time.perf_counter() - started:.0f}s; ")
    return 0
