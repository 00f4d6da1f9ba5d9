"""The expand stage: ``RUN/expand/train.jsonl``, the training prompts grown with perturbed, wrapped,
composed and rewritten copies (train only: validation, test, OOD and the named eval sets are only
checked against).

It runs between prompts and generate when ``expand.enabled`` is set; the generate stage then answers
``RUN/expand/train.jsonl``. Its hash covers the expansion settings (values away from their defaults),
the writer's identity and shipped rewrites file, the prompts stage and the seed.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, file_hash
from ..progress import say
from .config import hashed_expand_config
from .run import run_expand
from .writer import make_writer_runner, writer_identity


class ExpandStage(Stage):
    name = "expand"

    def folders(self, ctx: RunContext) -> list[str]:
        return [self.name] if ctx.cfg.expand.enabled else []

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        cfg = ctx.cfg
        w = cfg.expand.writer
        inputs = {"config": hashed_expand_config(cfg.expand), "prompts": ctx.need("prompts"), "seed": cfg.seed}
        if w.enabled and w.model:
            inputs["writer"] = writer_identity(w, cfg.base_dir)
        if w.enabled and w.cache_file and cfg.resolve(w.cache_file).exists():
            inputs["rewrites_file"] = file_hash(cfg.resolve(w.cache_file))
        return inputs

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
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
        say(
            f"  expand: {stats['seeds']} seed prompts + {stats['expansions']} expansions "
            + ", ".join(f"{m}={v['kept']}" for m, v in stats["methods"].items())
            + f"; dropped {stats['dropped']}"
        )
        return stats


EXPAND = ExpandStage()
