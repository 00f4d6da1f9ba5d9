"""The student stage (``student.init: prune``): ``RUN/student/``, the teacher pruned to the student's sizes.

Runs after generate: the calibration set is the training prompts with the teacher's own answers,
so the importance of every layer, head and channel is measured on the text the student will learn.
Its hash covers the prune settings (values away from their defaults), the teacher's identity, the
generate stage and the seed. The folder is a plain Hugging Face model directory (``prune.json``
records how it was derived); the train stage starts every student from it, and the eval stage's
floor is this untrained pruned model.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, hashed
from ..errors import UserError
from .run import prune_model


class StudentStage(Stage):
    name = "student"

    def folders(self, ctx: RunContext) -> list[str]:
        return [self.name] if ctx.cfg.student.init == "prune" else []

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        if not ctx.teacher.is_local:
            raise UserError(
                "student.init: prune needs the teacher's weights (a local model directory or GGUF file)", "student.init"
            )
        return {
            "prune": hashed(ctx.cfg.student.prune),
            "teacher": ctx.teacher.identity(),
            "generate": ctx.need("generate"),
            "seed": ctx.cfg.seed,
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        pairs = ctx.pairs()
        summary = prune_model(ctx.teacher.model_dir(), out, ctx.cfg.student.prune, pairs)
        return {k: summary[k] for k in ("teacher_params", "student_params", "shape", "kept_layers") if k in summary}


STUDENT = StudentStage()
