"""The expand stage: ``RUN/expand/train.jsonl``, the training prompts grown with perturbed, wrapped,
composed and rewritten copies (train only: validation, test, OOD and the named eval sets are only
checked against), and ``RUN/expand_validation/validation_expanded.jsonl``, the held-out split of
perturbed, wrapped and composed validation prompts (:mod:`.validation`).

Each folder is its own switch and hash. ``expand`` (``expand.enabled``) runs between prompts and
generate, and the generate stage then answers ``RUN/expand/train.jsonl``; its hash covers the
expansion settings (values away from their defaults), the writer's identity and shipped rewrites
file, the prompts stage and the seed. ``expand_validation`` (``expand.validation``) feeds only eval:
its hash covers the rule, wrap and compose settings, the prompts stage, the training expansions it
is kept apart from (when they ran) and the seed, so turning it on reruns nothing before eval.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, file_hash
from ..progress import say
from .config import VALIDATION_FOLDER, hashed_expand_config, hashed_validation_config
from .run import run_expand
from .validation import run_expand_validation
from .writer import make_writer_runner, writer_identity


def _summary(stats: dict) -> str:
    kept = ", ".join(f"{m}={v['kept']}" for m, v in stats["methods"].items())
    return f"{stats['seeds']} seed prompts + {stats['expansions']} expansions {kept}; dropped {stats['dropped']}"


class ExpandStage(Stage):
    name = "expand"

    def folders(self, ctx: RunContext) -> list[str]:
        e = ctx.cfg.expand
        return [f for f, on in ((self.name, e.enabled), (VALIDATION_FOLDER, e.validation)) if on]

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        cfg = ctx.cfg
        if folder == VALIDATION_FOLDER:
            inputs = {"config": hashed_validation_config(cfg.expand), "prompts": ctx.need("prompts"), "seed": cfg.seed}
            if cfg.expand.enabled:
                inputs["train"] = ctx.need(self.name)
            return inputs
        w = cfg.expand.writer
        inputs = {"config": hashed_expand_config(cfg.expand), "prompts": ctx.need("prompts"), "seed": cfg.seed}
        if w.enabled and w.model:
            inputs["writer"] = writer_identity(w, cfg.base_dir)
        if w.enabled and w.cache_file and cfg.resolve(w.cache_file).exists():
            inputs["rewrites_file"] = file_hash(cfg.resolve(w.cache_file))
        return inputs

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        if folder == VALIDATION_FOLDER:
            return self.build_validation(ctx, out)
        cfg = ctx.cfg
        runner = None
        if cfg.expand.writer.enabled and cfg.expand.writer.model:
            runner = make_writer_runner(
                cfg.expand.writer,
                base_dir=cfg.base_dir,
                cache_path=ctx.run_dir.root / ".cache" / "writer-api.sqlite",
                prices=ctx.teacher_prices(),
                seed=cfg.seed,
            )
        evals = ctx.held_out_splits()  # validation, test, ood and the eval sets
        stats = run_expand(
            cfg.expand, ctx.split("train"), evals, out, work, cfg.seed, writer_runner=runner, base_dir=cfg.base_dir
        )
        say(f"  expand: {_summary(stats)}")
        return stats

    def build_validation(self, ctx: RunContext, out: Path) -> dict:
        """The validation copies, kept apart from the training prompts (and their expansions) and the other splits."""
        evals = {s: r for s, r in ctx.held_out_splits().items() if s != "validation"}  # test, ood, the eval sets
        stats = run_expand_validation(
            ctx.cfg.expand, ctx.split("validation"), ctx.train_prompts(), evals, out, ctx.cfg.seed
        )
        say(f"  {VALIDATION_FOLDER}: {_summary(stats)}")
        return stats


EXPAND = ExpandStage()
