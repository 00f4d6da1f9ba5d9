"""``potstill tune CONFIG``: search the training settings on the validation split (Optuna, resumable)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import api
from ..progress import say
from .common import add_config_args

HELP = (
    "search the training settings (tune.space) on the validation split (validation_expanded with expand.validation);"
    " resumes; writes RUN/tune/best.yaml"
)


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help=HELP, description=HELP)
    add_config_args(p)
    p.add_argument("--trials", type=int, default=None, metavar="N", help="trials to finish (default: tune.trials)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="start no new trial after this long")
    p.add_argument("--method", choices=["kd", "sft"], default=None, help="the method searched (default: tune.method)")
    p.set_defaults(func=main)


def print_trials(result: dict, console: Console | None = None) -> None:
    """The study's trials as a table, best first, then where best.yaml is."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or pipe: one line per trial
            console = Console(width=160)
    keys = list(dict.fromkeys(k for r in result["trials"] for k in r["params"]))
    title = f"potstill tune: {result['study']} ({result['metric']} on {result['split']})"
    table = Table(title=title, title_justify="left")
    for header in ("trial", "state", result["metric"], *keys):
        table.add_column(header, justify="left" if header == "state" else "right", min_width=len(header))
    done = sorted((r for r in result["trials"] if r["value"] is not None), key=lambda r: -r["value"])
    for r in done + [r for r in result["trials"] if r["value"] is None]:
        cells = [str(r["trial"]), r["state"] if not r["error"] else f"failed: {r['error']}"]
        cells.append(f"{r['value']:.3f}" if r["value"] is not None else "")
        cells += [_fmt(r["params"].get(k)) for k in keys]
        table.add_row(*(Text(c) for c in cells))
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main(args) -> int:
    result = api.tune(
        args.config, args.overrides, args.force, trials=args.trials, timeout_s=args.timeout, method=args.method
    )
    print_trials(result)
    best = result["best"]
    if best is None:
        say("tune: no trial finished yet")
        return 1
    say(f"tune: best trial {best['trial']}, {best['metric']} {best['value']:.3f}: {result['paths']['best']}")
    say("  potstill run CONFIG " + " ".join(best["command_line"]))
    return 0
