"""``potstill train CONFIG``: train the students (SFT on teacher text, KD on teacher distributions)."""

from .. import api
from ..progress import say
from .common import add_config_args

HELP = "train one student per method on the teacher's answers (needs prompts and generate)"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    add_config_args(p)
    p.add_argument(
        "--method",
        action="append",
        choices=["sft", "kd"],
        default=None,
        help="train only this method (repeatable; default: the config's train.methods)",
    )
    p.set_defaults(func=main)


def main(args) -> int:
    api.train(args.config, args.overrides, args.force, methods=args.method)
    say("train: done")
    return 0
