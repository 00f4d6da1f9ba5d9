"""``potstill capture CONFIG``: run the teacher once over the training pairs and store its soft labels."""

from .. import api
from ..progress import say
from ..signals.formats import FORMATS, SAMPLING
from .common import add_config_args

HELP = (
    "run the teacher once over the training pairs and store its soft labels in RUN/signals "
    "(for train.kd.signal=store; needs prompts and generate)"
)


def add_parser(sub) -> None:
    p = sub.add_parser("capture", help=HELP, description=HELP)
    add_config_args(p)
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default=None,
        help="what to store per response token (default: train.kd.store_format)",
    )
    p.add_argument("--k", type=int, default=None, help="ids per token of a topk store (default: train.kd.store_k)")
    p.add_argument(
        "--draws", type=int, default=None, help="draws per token of a sampled store (default: train.kd.store_draws)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="temperature of the stored distributions (default: train.kd.temperature; training must match)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="sequences per teacher forward pass (default: teacher.batch_size)"
    )
    p.add_argument(
        "--sampling", choices=SAMPLING, default=None, help="sampling scheme of a sampled store (default: systematic)"
    )
    p.set_defaults(func=main)


def main(args) -> int:
    force = ["signals" if f == "capture" else f for f in args.force]
    path = api.capture(
        args.config,
        args.overrides,
        force,
        fmt=args.fmt,
        k=args.k,
        draws=args.draws,
        temperature=args.temperature,
        batch_size=args.batch_size,
        sampling=args.sampling,
    )
    say(f"capture: done ({path})")
    return 0
