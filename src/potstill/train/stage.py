"""The train stage: one student per method in ``train.methods``, each in ``RUN/students/<method>/``.

A student's hash covers the training settings (values set away from their defaults), the student's
starting point (its files, or the init stage), the generate stage, the seed and, for ``kd``, the
teacher's identity and the signal store it reads. ``--force train`` redoes every student. Every rank
of a multi-process launch trains; only the main process writes the folder.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, file_hash, hashed
from ..models import model_hash
from ..terms.gate import terms_provenance
from .student import train_student


def hashed_student(student) -> dict:
    """The student section as the train stage's hash sees it: values away from their defaults, and the
    pruning sizes only when the student is pruned (they shape nothing else)."""
    out = hashed(student)
    if student.init != "prune":
        out.pop("prune", None)
    return out


class TrainStage(Stage):
    name = "train"
    all_ranks = True

    def folders(self, ctx: RunContext) -> list[str]:
        return [f"students/{m}" for m in ctx.cfg.train.methods]

    def student_hash(self, ctx: RunContext) -> str:
        if ctx.cfg.student.init == "prune":
            return ctx.need("student")
        return model_hash(ctx.student_dir(), ctx.student_init)

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        cfg = ctx.cfg
        method = folder.split("/", 1)[1]
        skip = {"methods"} if method == "kd" else {"methods", "kd"}  # an sft student does not read train.kd
        inputs = {
            "method": method,
            "train": cfg.train.model_dump(mode="json", exclude=skip, exclude_defaults=True),
            "student": hashed_student(cfg.student),
            "student_hash": self.student_hash(ctx),
            "generate": ctx.need("generate"),
            "seed": cfg.seed,
        }
        if method == "kd":
            inputs["teacher"] = ctx.teacher.identity()
            if cfg.train.kd.signal == "store":  # offline KD: the teacher's signals captured once, then trained from
                inputs["signals"] = (
                    file_hash(cfg.resolve(str(Path(cfg.train.kd.store) / "manifest.json")))
                    if cfg.train.kd.store
                    else ctx.need("signals")
                )
        return inputs

    def build(self, ctx: RunContext, folder: str, out: Path | None, work: Path) -> dict:
        """``out`` is None on the helper ranks of a multi-process launch."""
        method = folder.split("/", 1)[1]
        provenance = {
            "teacher": ctx.teacher.display,
            "teacher_hash": ctx.teacher.identity(),
            "student_base": str(ctx.student_dir()),
            "student_base_hash": self.student_hash(ctx),
            "prompts_hash": ctx.need("prompts"),
            "generations_hash": ctx.need("generate"),
            "terms": terms_provenance(ctx.cfg, ctx.teacher, ctx.terms),
        }
        return train_student(
            method,
            ctx.cfg,
            ctx.pairs(),
            out,
            work,
            provenance=provenance,
            teacher=ctx.teacher,
            student_dir=ctx.student_dir(),
            student_init=ctx.student_init,
        )


TRAIN = TrainStage()
