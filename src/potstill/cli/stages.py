"""``potstill prompts|eval CONFIG``: one stage at a time (``generate`` is :mod:`potstill.cli.generate`).

Each needs its upstream stages done in the same run directory (``potstill run`` does them all).
"""

from .. import api
from ..progress import say
from .common import add_config_args

STAGES = {
    "prompts": ("load, drop empty, dedup and split the prompts (train/validation/test/ood)", api.prompts),
    "eval": ("teacher, students and the untrained floor answer the test and OOD splits; scores", api.evaluate),
}


def add_parsers(sub) -> None:
    for name, (text, fn) in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        add_config_args(p)
        p.set_defaults(func=lambda args, fn=fn, name=name: _run(fn, name, args))


def _run(fn, name, args) -> int:
    fn(args.config, args.overrides, args.force)
    say(f"{name}: done")
    return 0
