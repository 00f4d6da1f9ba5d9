"""``potstill route calibrate CONFIG``: calibrate the student → teacher cascade of a run.

Runs what is missing up to the route stage (like ``potstill run`` without the report), then
prints, per split, the teacher share and the blended quality at the calibrated threshold.
``--out`` copies the route file to a path of your choice for ``potstill serve --route``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import api
from ..errors import UserError
from ..progress import say
from .common import add_config_args

HELP = "routing between student and teacher"
CALIBRATE = (
    "calibrate the confidence threshold on the validation split and check it on test/OOD "
    "(writes <run_dir>/route/route.json for `potstill serve --route`)"
)


def add_parser(sub) -> None:
    p = sub.add_parser("route", help=HELP, description=HELP)
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    c = rsub.add_parser("calibrate", help=CALIBRATE, description=CALIBRATE)
    add_config_args(c)
    c.add_argument(
        "--target-quality",
        type=float,
        default=None,
        metavar="PCT",
        help="blended quality to reach, in %% of the teacher's (default: route.target_quality, 98)",
    )
    c.add_argument(
        "--max-teacher-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="most queries sent to the teacher, e.g. 0.2 (alone: the best quality within it)",
    )
    c.add_argument("--signal", default=None, help="confidence signal (route.signal), e.g. p10, mean_logprob, logistic")
    c.add_argument("--student", default=None, help="trained method whose student is routed (default: kd)")
    c.add_argument("--out", "-o", type=Path, default=None, help="also copy route.json here")
    c.set_defaults(func=calibrate)


def calibrate(args) -> int:
    overrides = list(args.overrides)
    if args.target_quality is not None:
        overrides.append(f"route.target_quality={args.target_quality}")
    if args.max_teacher_share is not None:
        overrides.append(f"route.max_teacher_share={args.max_teacher_share}")
        if args.target_quality is None:
            overrides.append("route.target_quality=null")
    for key, value in (("signal", args.signal), ("student", args.student)):
        if value is not None:
            overrides.append(f"route.{key}={value}")
    overrides.append("route.enabled=true")
    route = api.route(args.config, overrides, args.force)
    show_route(route)
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(route["path"]), args.out)
        except OSError as e:
            raise UserError(f"cannot write {args.out} ({e.strerror or e})") from None
        say(f"route: copied to {args.out}")
    return 0


def show_route(route: dict) -> None:
    """One line per split: teacher share (95% CI) and blended quality (95% CI) at the threshold."""
    r = route["router"]
    say(f"route: {route['student']['method']} student, {r['signal']} score < {r['threshold']:.4g} → teacher")
    for split, c in route["checks"].items():
        lo, hi = c["share_ci95"] or [float("nan")] * 2
        pct = c.get("pct_of_teacher")
        ci = c.get("pct_of_teacher_ci95") or [float("nan")] * 2
        quality = f"{pct:.1f}% of the teacher's quality [{ci[0]:.1f}, {ci[1]:.1f}]" if pct is not None else "n/a"
        tag = " (calibration)" if c.get("calibration") else ""
        say(
            f"  {split}{tag}: {100 * c['share']:.1f}% to the teacher [{100 * lo:.1f}, {100 * hi:.1f}] → {quality}; "
            f"student alone {c['student_pct_of_teacher']:.1f}%"
            + (f"; APGR {c['apgr']:.3f}" if c.get("apgr") is not None else "")
        )
    for n in route.get("notes") or []:
        say(f"  note: {n}")
    say(f"route: {route['path']}")
