"""The generate stage: the teacher answers every training prompt (``RUN/generate/``), resumably.

Its hash covers the generation settings that change an answer, the teacher's identity (weights
hash, or API provider/model/endpoint), the training prompts and the seed. Before anything is
generated the teacher's terms are checked (:mod:`potstill.terms`). ``potstill generate --shard I/N``
runs one data-parallel part (:func:`generate_shard`); a later unsharded run merges the parts.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage
from ..io import sha256_json
from ..progress import say
from ..terms.gate import preflight_terms
from .generate import hashed_teacher_config, run_generate, run_generate_shard


def check_terms(ctx: RunContext) -> None:
    """The terms gate, once per process (``potstill run`` asks it in its preflight already)."""
    if ctx.terms is None:
        ctx.terms = preflight_terms(
            ctx.cfg, ctx.teacher, ctx.run_dir.root, teacher_hash=ctx.teacher.identity(), say=say
        )


class GenerateStage(Stage):
    name = "generate"

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        return {
            "config": hashed_teacher_config(ctx.cfg.teacher, ctx.teacher),
            "teacher": ctx.teacher.identity(),
            "prompts": ctx.need(ctx.train_prompts_stage()),
            "seed": ctx.cfg.seed,
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        check_terms(ctx)
        return run_generate(
            ctx.teacher_config(),
            ctx.teacher,
            ctx.train_prompts(),
            out,
            work,
            ctx.cfg.seed,
            prices=ctx.teacher_prices(),
            cache_path=ctx.api_cache() if ctx.teacher.is_api else None,
        )


GENERATE = GenerateStage()


def generate_shard(ctx: RunContext, shard: tuple[int, int]) -> str:
    """Part ``I`` of ``N`` of the generate stage into its work folder (written by a later unsharded run)."""
    check_terms(ctx)
    h = sha256_json(GENERATE.inputs(ctx, GENERATE.name))
    if "generate" not in ctx.run_dir.force and ctx.run_dir.done_hash("generate") == h:
        say("[green]✓[/] generate: up to date, skipped")
        return h
    s = run_generate_shard(
        ctx.teacher_config(), ctx.teacher, ctx.train_prompts(), ctx.run_dir.work("generate", h), shard, ctx.cfg.seed
    )
    say(f"  generate: shard {s['shard']}: {s['records']} answers ({s['generated']} generated now) in {s['path']}")
    return h
