"""The stage contract: a :class:`RunContext` every stage reads, and the :class:`Stage` shape they share.

A stage is a row of the pipeline's table (:data:`potstill.pipeline.STAGES`): a ``name`` (its run
directory folder and its ``--force`` name), ``inputs(ctx)`` (everything its output depends on, and
nothing more: the stage is redone exactly when their hash changes) and ``build(ctx, out, work)``
(writes the artifacts into ``out``, renamed into place when it returns; ``work`` keeps resumable
progress). A stage never calls another stage: it reads what the stages before it wrote, through
``ctx.need(name)`` (their hash, an error when they have not run) and ``ctx.path(name)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .data.config import EXPANDED_VALIDATION
from .errors import UserError
from .expand.config import VALIDATION_FOLDER
from .io import read_jsonl, sha256_dir, sha256_file
from .progress import say
from .run_dir import RunDir
from .teachers.spec import ModelSpec, teacher_spec


def hashed(section) -> dict:
    """A config section as stage inputs: the values set away from their defaults only, so that a key
    added to potstill with a default changes no hash (and no finished stage reruns)."""
    return section.model_dump(mode="json", exclude_defaults=True)


def file_hash(path: Path) -> str:
    """The hash of a data file, or of every file under a directory (a saved HF dataset)."""
    if path.is_dir():
        return sha256_dir(path, ("**/*",))
    if not path.exists():
        raise UserError("file not found", str(path))
    return sha256_file(path)


@dataclass
class RunContext:
    """What every stage reads: the validated config, the run directory, the resolved teacher, the
    hashes of the stages done in this process, and the shared views of their outputs."""

    cfg: RunConfig
    run_dir: RunDir
    teacher: ModelSpec
    hashes: dict[str, str] = field(default_factory=dict)
    terms: dict | None = None  # the terms verdict, once the preflight or the generate stage checked it

    @classmethod
    def open(cls, cfg: RunConfig, force: set[str] | None = None) -> RunContext:
        return cls(cfg=cfg, run_dir=RunDir(cfg.run_path, force), teacher=teacher_spec(cfg.teacher, cfg.resolve))

    # -- stage bookkeeping ----------------------------------------------------------------
    def need(self, stage: str) -> str:
        """The hash of a finished stage; a one-line error when it has not run in this run directory."""
        h = self.hashes.get(stage) or self.run_dir.done_hash(stage)
        if h is None:
            raise UserError(
                f"stage '{stage}' has not been run yet in {self.run_dir.root} (run it first, or use 'potstill run')"
            )
        return h

    def path(self, stage: str) -> Path:
        return self.run_dir.path(stage)

    # -- models ---------------------------------------------------------------------------
    def student_dir(self) -> Path:
        """The student's starting point: the configured directory, or the init stage's output (pruned)."""
        if self.cfg.student.init == "prune":
            return self.path("student")
        from .models import model_path  # defers torch

        return model_path(self.cfg.resolve(self.cfg.student.model))  # a .gguf file: its converted directory

    @property
    def student_init(self) -> str:
        """How the student's weights start when loaded from :meth:`student_dir` (a pruned dir holds weights)."""
        return "pretrained" if self.cfg.student.init == "prune" else self.cfg.student.init

    def teacher_config(self):
        """The teacher section with paths resolved against the config file (an API teacher's tokenizer)."""
        t = self.cfg.teacher
        if self.teacher.is_api and t.tokenizer:
            return t.model_copy(update={"tokenizer": str(self.cfg.resolve(t.tokenizer))})
        return t

    def teacher_tokenizer_dir(self) -> Path | None:
        """Where the teacher's tokenizer lives: its model directory, or ``teacher.tokenizer`` for an API teacher."""
        if self.teacher.is_api:
            return self.cfg.resolve(self.cfg.teacher.tokenizer) if self.cfg.teacher.tokenizer else None
        return self.teacher.model_dir()

    def api_cache(self) -> Path:
        """The API answer cache shared by generate, eval, route and the judge (one per run by default)."""
        t = self.cfg.teacher
        return self.cfg.resolve(t.cache) if t.cache else self.run_dir.root / ".cache" / "teacher-api.sqlite"

    def teacher_prices(self) -> tuple[float | None, float | None]:
        p = self.cfg.prices.teacher
        return p.usd_per_1m_input_tokens, p.usd_per_1m_output_tokens

    def models(self) -> dict[str, dict]:
        """The models compared at evaluation: teacher first, then each student, then the floor."""
        cfg = self.cfg
        t = self.teacher
        models = {
            "teacher": {
                "path": t.display if t.is_api else t.model_dir(),
                "role": "teacher",
                "method": None,
                "dtype": cfg.teacher.dtype,
                "api": t.is_api,
                "identity": t.identity(),
            }
        }
        for m in cfg.train.methods:
            models[m] = {
                "path": self.path(f"students/{m}"),
                "role": "student",
                "method": m,
                "identity": self.need(f"students/{m}"),
            }
        if cfg.eval.include_floor:
            models["floor"] = {
                "path": self.student_dir(),
                "role": "floor",
                "method": None,
                "init": self.student_init,
                "dtype": cfg.student.dtype,
                "identity": self.floor_identity(),
            }
        return models

    def floor_identity(self) -> str:
        """The untrained student's identity: the init stage's hash (pruned), else its files and init."""
        if self.cfg.student.init == "prune":
            return self.need("student")
        from .models import model_hash  # defers torch

        return model_hash(self.student_dir(), self.student_init) + ":" + self.student_init

    # -- data -----------------------------------------------------------------------------
    def train_prompts_stage(self) -> str:
        """Where the training prompts come from: the expand stage's output when it ran, else the prompts stage's."""
        return "expand" if self.cfg.expand.enabled else "prompts"

    def train_prompts(self) -> list[dict]:
        return read_jsonl(self.path(self.train_prompts_stage()) / "train.jsonl")

    def pairs(self) -> list[dict]:
        """(prompt, teacher answer) pairs for training, joined on id."""
        gens = {g["id"]: g for g in read_jsonl(self.path("generate") / "generations.jsonl")}
        return [
            {
                "id": p["id"],
                "messages": p["messages"],
                "response_text": gens[p["id"]]["text"],
                "response_token_ids": gens[p["id"]].get("token_ids"),
                "finish_reason": gens[p["id"]]["finish_reason"],
                "top_logprobs": gens[p["id"]].get("top_logprobs"),
            }
            for p in self.train_prompts()
            if p["id"] in gens
        ]

    def split_folder(self, name: str) -> str:
        """The folder a split is read from: the expand stage's for ``validation_expanded``, else the prompts stage's."""
        return VALIDATION_FOLDER if name == EXPANDED_VALIDATION else "prompts"

    def split_inputs(self, names) -> dict[str, str]:
        """For a stage's hash: the hash of the stage that wrote each split in ``names``, for splits another
        stage than prompts writes (``validation_expanded``); the prompts stage's hash covers the rest."""
        return {n: self.need(self.split_folder(n)) for n in names if self.split_folder(n) != "prompts"}

    def split(self, name: str) -> list[dict]:
        folder = self.split_folder(name)
        if folder != "prompts":
            self.need(folder)  # one line when expand.validation was turned on but the expand stage not run
        return read_jsonl(self.path(folder) / f"{name}.jsonl")

    def held_out_splits(self) -> dict[str, list[dict]]:
        """Every split kept out of training: validation, test, ood and each ``prompts.eval_sets`` entry
        (what the expand stage keeps its expansions away from), whether evaluated or not."""
        return {s: self.split(s) for s in self.cfg.prompts.held_out()}

    def eval_splits(self) -> dict[str, list[dict]]:
        """The evaluation splits (``eval.splits``, at most ``eval.max_examples`` each); an error when all are empty."""
        splits = {}
        for s in self.cfg.eval.splits:
            rows = self.split(s)
            if self.cfg.eval.max_examples:
                rows = rows[: self.cfg.eval.max_examples]
            if rows:
                splits[s] = rows
        if not splits:
            raise UserError(f"no prompts in the evaluation splits {self.cfg.eval.splits}")
        return splits


class Stage:
    """One row of the pipeline: subclasses set ``name`` and implement :meth:`inputs` and :meth:`build`.

    ``folders(ctx)`` lists the run-directory folders it writes (one per trained method for the train
    stage; none when the stage is off for this config); ``all_ranks`` stages also run on the helper
    ranks of a multi-process launch (training).
    """

    name: str = ""
    all_ranks: bool = False

    def folders(self, ctx: RunContext) -> list[str]:
        return [self.name]

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        raise NotImplementedError

    def build(self, ctx: RunContext, folder: str, out: Path | None, work: Path) -> dict | None:
        raise NotImplementedError

    def run(self, ctx: RunContext) -> list[str]:
        """Each folder built unless done with the same inputs; returns their hashes."""
        done = []
        for folder in self.folders(ctx):
            inputs = self.inputs(ctx, folder)
            h = ctx.run_dir.run(
                folder,
                inputs,
                lambda out, work, f=folder: self.build(ctx, f, out, work),
                all_ranks=self.all_ranks,
                force_name=self.name,
            )
            ctx.hashes[folder] = h
            done.append(h)
        return done


__all__ = ["RunContext", "Stage", "file_hash", "hashed", "say"]
