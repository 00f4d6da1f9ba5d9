"""The route stage: calibrate the student → teacher cascade and check it on the held-out splits.

The student answers the calibration split (``route.split``, default validation) and every
evaluation split as the gateway would (:mod:`.answers`); the task scorer grades each answer and
the teacher's. On the calibration split the stage fits the router (a single signal, or a
logistic regression), draws the routing curve and picks the threshold for the target; it then
applies that threshold to each evaluation split. Files: ``route.json`` (what ``potstill serve
--route`` loads: the router, the student and teacher, the target, the calibration and every
check with intervals, APGR, cost per query at the chosen point), ``curves.json`` (the curve of
every split) and ``answers/<split>.jsonl`` (per query: both scores, the features, the router
score and the decision).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..context import RunContext, Stage, hashed
from ..engines import make_generator
from ..errors import UserError
from ..evaluate.compare import answer_split
from ..evaluate.cost import run_costs
from ..evaluate.scorers import build_scorer, scorer_name
from ..io import read_jsonl, write_json, write_jsonl
from ..progress import say
from ..teachers.base import GenerationSettings
from ..teachers.generate import api_answers
from .answers import answer_with_confidence
from .calibrate import apgr, check, choose, curve, fit_logistic
from .features import Router


def scorable(score_fn, record: dict, reference: str) -> bool:
    """Whether the task scorer can grade this record (a reference-based scorer needs its labels)."""
    try:
        score_fn(reference, record, reference)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def pick_student(cfg: RunConfig) -> str:
    """``route.student``, else ``kd`` when trained, else the first method."""
    if cfg.route.student:
        return cfg.route.student
    return "kd" if "kd" in cfg.train.methods else cfg.train.methods[0]


def cascade_cost(costs: dict, student: str, share: float) -> dict | None:
    """USD per query of the cascade: the student always answers; a share of queries also pays the teacher."""
    if not costs or student not in costs or "teacher" not in costs:
        return None
    s, t = costs[student]["cost_per_query_usd"], costs["teacher"]["cost_per_query_usd"]
    cascade = s + share * t
    return {
        "student_usd": s,
        "teacher_usd": t,
        "cascade_usd": cascade,
        "saving_vs_teacher": 1 - cascade / t if t else None,
    }


def run_route(
    cfg: RunConfig,
    student: str,
    student_dir: Path,
    splits: dict[str, list[dict]],
    teacher_answers: dict[str, list[dict]],
    costs: dict | None,
    out: Path,
    work: Path,
    teacher_name: str = "teacher",
) -> dict:
    """Calibrate on ``cfg.route.split`` and check on the other ``splits`` ({split: records}).

    ``teacher_answers``: {split: [{"id", "text"}]} in record order. ``costs``: the report's
    per-model cost summary (None: no cost figures). Returns the route file's content.
    """
    rc = cfg.route
    score_fn = build_scorer(cfg.eval.scorer)
    max_new = rc.max_new_tokens or cfg.eval.max_new_tokens
    per_split, notes = {}, []
    for split, records in splits.items():
        refs = {r["id"]: t["text"] for r, t in zip(records, teacher_answers[split])}
        records = [r for r in records if scorable(score_fn, r, refs[r["id"]])]
        if len(records) < len(refs):
            notes.append(
                f"{split}: {len(refs) - len(records)} of {len(refs)} prompts cannot be graded by the task "
                f"scorer (e.g. unlabeled prompts from a fallback log) and are left out"
            )
        if not records:
            continue
        answers = answer_with_confidence(
            student_dir,
            records,
            max_new,
            rc.batch_size,
            dtype=cfg.student.dtype,
            engine=cfg.eval.engine,
            cache=work / f"{split}.jsonl",
            label=f"route {student}/{split}",
        )
        per_split[split] = {
            "records": records,
            "answers": answers,
            "student": [score_fn(a["text"], r, refs[r["id"]]) for a, r in zip(answers, records)],
            "teacher": [score_fn(refs[r["id"]], r, refs[r["id"]]) for r in records],
        }
    if rc.split not in per_split:
        raise UserError(
            f"route.split '{rc.split}': none of its prompts can be graded by the task scorer "
            f"({scorer_name(cfg.eval.scorer)})"
        )
    calib = per_split[rc.split]
    router_spec = {"signal": rc.signal}
    if rc.signal == "logistic":
        try:
            router_spec = fit_logistic(
                [a["features"] for a in calib["answers"]], calib["student"], calib["teacher"], seed=cfg.seed
            )
        except ValueError as e:
            notes.append(f"logistic router not fitted: {e}; used mean_logprob instead")
            router_spec = {"signal": "mean_logprob"}
    router = Router({**router_spec, "threshold": 0.0})
    for data in per_split.values():
        data["scores"] = [router.score(a["features"]) for a in data["answers"]]
    points = curve(calib["scores"], calib["student"], calib["teacher"])
    chosen = choose(points, rc.target_quality, rc.max_teacher_share)
    if not chosen["met"]:
        notes.append(
            f"target not reached on {rc.split}: {100 * chosen['quality'] / max(points[-1]['quality'], 1e-12):.1f}% "
            f"of the teacher at a {100 * chosen['share']:.1f}% teacher share"
        )
    threshold = chosen["threshold"]
    router_spec["threshold"] = threshold
    samples = cfg.eval.bootstrap_samples
    checks, curves = {}, {}
    for split, data in per_split.items():
        pts = curve(data["scores"], data["student"], data["teacher"])
        curves[split] = {"points": pts, "apgr": apgr(pts)}
        checks[split] = {
            **check(data["scores"], data["student"], data["teacher"], threshold, samples, cfg.seed),
            "apgr": curves[split]["apgr"],
            "calibration": split == rc.split,
        }
        checks[split]["cost"] = cascade_cost(costs, student, checks[split]["share"])
        rows = [
            {
                "id": r["id"],
                "student_text": a["text"],
                "student_score": s,
                "teacher_score": t,
                "route_score": sc,
                "to_teacher": sc < threshold,
                "features": a["features"],
            }
            for r, a, s, t, sc in zip(
                data["records"], data["answers"], data["student"], data["teacher"], data["scores"]
            )
        ]
        write_jsonl(out / "answers" / f"{split}.jsonl", rows)
    route = {
        "version": 1,
        "router": router_spec,
        "student": {"method": student, "path": str(student_dir)},
        "teacher": {"model": teacher_name},
        "scorer": scorer_name(cfg.eval.scorer),
        "target": {
            "quality_pct_of_teacher": rc.target_quality,
            "max_teacher_share": rc.max_teacher_share,
            "split": rc.split,
            "met": chosen["met"],
        },
        "chosen": {"share": chosen["share"], "quality": chosen["quality"], "threshold": threshold},
        "checks": checks,
        "notes": notes,
    }
    write_json(out / "route.json", route)
    write_json(out / "curves.json", curves)
    for split, c in checks.items():
        say(
            f"  route {split}: {100 * c['share']:.1f}% to the teacher → {c['pct_of_teacher']:.1f}% of the teacher's "
            f"quality (student alone {c['student_pct_of_teacher']:.1f}%)"
            if c["pct_of_teacher"] is not None
            else f"  route {split}: {100 * c['share']:.1f}% to the teacher"
        )
    for n in notes:
        say(f"  [yellow]note[/]: {n}")
    return route


class RouteStage(Stage):
    """Off when ``route.enabled`` is off, or (unless ``required``, as for ``potstill route calibrate``) when
    the calibration split is empty: a run without validation prompts still finishes, with a warning."""

    name = "route"

    def __init__(self, required: bool = False):
        self.required = required

    def folders(self, ctx: RunContext) -> list[str]:
        cfg = ctx.cfg
        if not cfg.route.enabled and not self.required:
            return []
        student = pick_student(cfg)
        if student not in cfg.train.methods:
            raise UserError(
                f"route.student '{student}' is not a trained method (train.methods: {', '.join(cfg.train.methods)})"
            )
        if ctx.split(cfg.route.split):
            return [self.name]
        if self.required:
            raise UserError(
                f"route.split '{cfg.route.split}' has no prompts in this run (set prompts.validation above "
                "0, or route.split to another split)"
            )
        say(
            f"  [yellow]warning[/]: route: skipped, the calibration split '{cfg.route.split}' has no prompts "
            "(set prompts.validation above 0, or route.split)"
        )
        return []

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        cfg = ctx.cfg
        return {
            **ctx.split_inputs([cfg.route.split]),  # validation_expanded: the expand stage's hash
            "route": hashed(cfg.route),
            "eval": ctx.need("eval"),
            "measure": ctx.need("measure"),
            "student": ctx.need(f"students/{pick_student(cfg)}"),
            "scorer": hashed(cfg.eval.scorer),
            "prices": hashed(cfg.prices),
            "seed": cfg.seed,
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        cfg, split, student = ctx.cfg, ctx.cfg.route.split, pick_student(ctx.cfg)
        splits = {split: ctx.split(split), **{s: r for s, r in ctx.eval_splits().items() if s != split}}
        teacher = {s: teacher_answers(ctx, s, recs, work) for s, recs in splits.items()}
        route = run_route(
            cfg,
            student,
            ctx.path(f"students/{student}"),
            splits,
            teacher,
            run_costs(cfg.prices, ctx.path("eval"), ctx.path("measure")),
            out,
            work,
            teacher_name=ctx.teacher.display,
        )
        return {"threshold": route["chosen"]["threshold"], "share": route["chosen"]["share"]}


ROUTE = RouteStage()


def teacher_answers(ctx: RunContext, split: str, records: list[dict], work: Path) -> list[dict]:
    """The teacher's answers on a split: the eval stage's when it answered it, else generated now
    (an API teacher through the generate stage's engine and cache, a local one greedily)."""
    done = ctx.path("eval") / "answers" / f"teacher__{split}.jsonl"
    if done.exists():
        rows = {r["id"]: r for r in read_jsonl(done)}
        if all(r["id"] in rows for r in records):
            return [rows[r["id"]] for r in records]
    cfg = ctx.cfg
    if ctx.teacher.is_api:
        return api_answers(ctx, {split: records}, work, cfg.eval.max_new_tokens)[split]
    gen = make_generator(cfg.eval.engine, ctx.teacher.model_dir(), dtype=cfg.teacher.dtype, seed=cfg.seed)
    settings = GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, seed=cfg.seed)
    return answer_split(gen, records, settings, work / f"teacher__{split}.jsonl", f"route teacher/{split}")
