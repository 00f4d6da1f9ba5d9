"""The pipeline: the ordered table of stages, and running them.

Every stage has the shape of :class:`potstill.context.Stage` (a name, the inputs its hash covers,
``build(ctx)``) and reads what the stages before it wrote. A stage whose inputs did not change is
skipped (:mod:`potstill.run_dir`). A new stage is one module exposing its stage object, plus one
line in :data:`STAGES`.
"""

from __future__ import annotations

from .config import RunConfig, dump_config
from .context import RunContext, Stage
from .data.stage import PROMPTS
from .distributed import is_main_process
from .errors import UserError
from .evaluate.stage import EVAL, MEASURE
from .expand.stage import EXPAND
from .io import write_text
from .models import model_hash
from .progress import say
from .prune.stage import STUDENT
from .report.stage import REPORT, read_report
from .route.stage import ROUTE
from .signals.stage import SIGNALS
from .teachers.stage import GENERATE, check_terms
from .terms.gate import gate, preflight_terms
from .train.stage import TRAIN
from .train.student import check_kd_tokenizers

STAGES: tuple[Stage, ...] = (
    PROMPTS,  # sources -> train / validation / test / ood
    EXPAND,  # more training prompts: perturbed, wrapped, composed, rewritten (expand.enabled)
    GENERATE,  # the teacher answers the training prompts
    STUDENT,  # the teacher pruned into the student's starting weights (student.init: prune)
    SIGNALS,  # the teacher's soft labels, captured once (train.kd.signal: store)
    TRAIN,  # one student per method
    EVAL,  # teacher vs students on the held-out splits
    MEASURE,  # latency, memory, cost per query
    ROUTE,  # student -> teacher cascade threshold
    REPORT,  # report.md / .html / .json
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def open_run(cfg: RunConfig, force: set[str] | None = None) -> RunContext:
    """The run context of a config: ``--force`` names checked, the resolved config saved in the run directory."""
    bad = set(force or ()) - set(STAGE_NAMES)
    if bad:
        raise UserError(f"unknown stage '{sorted(bad)[0]}' for --force (stages: {', '.join(STAGE_NAMES)})")
    ctx = RunContext.open(cfg, force)
    if is_main_process():  # under a multi-process launch only rank 0 writes the run directory
        write_text(ctx.run_dir.root / "config.yaml", dump_config(cfg))
    return ctx


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def preflight(ctx: RunContext) -> None:
    """Checks that need no stage to run: the teacher's terms allow the configured use (a blocked run
    stops here, before the teacher's weights are hashed; the verdict is written to ``RUN/terms.json``),
    the teacher and student exist, and which path kd takes (token-level, text-level or ULD)."""
    cfg = ctx.cfg
    decision = gate(cfg, ctx.teacher)
    teacher_hash = ctx.teacher.identity()
    if cfg.student.init != "prune":
        model_hash(ctx.student_dir(), cfg.student.init)
        if "kd" in cfg.train.methods:
            say(check_kd_tokenizers(cfg, ctx.teacher, ctx.student_dir())[1])
    ctx.terms = preflight_terms(
        cfg, ctx.teacher, ctx.run_dir.root, teacher_hash=teacher_hash, say=say, decision=decision
    )


def run_stages(ctx: RunContext, names: list[str] | tuple[str, ...]) -> None:
    """The named stages, in the table's order (each skipped when done)."""
    for s in STAGES:
        if s.name in names:
            if s is GENERATE:
                check_terms(ctx)
            s.run(ctx)


def run_all(ctx: RunContext, until: str = "report") -> dict | None:
    """Every stage up to ``until`` (skipping those done); the report dict when the report stage ran."""
    preflight(ctx)
    for s in STAGES[: STAGE_NAMES.index(until) + 1]:
        s.run(ctx)
    return read_report(ctx) if until == "report" else None
