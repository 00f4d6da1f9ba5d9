"""The prompts stage: ``RUN/prompts/{train,validation,test,ood}.jsonl``, ``NAME.jsonl`` per eval set, ``stats.json``.

Its hash covers the prompts section (values set away from their defaults), the content of every
source file and the prompt length limit (with the teacher's tokenizer it is counted with):
editing a source reruns it, renaming the run does not.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, file_hash
from ..progress import say
from ..teachers.limits import prompt_limit
from .prompts import hashed_prompts_config, run_prompts


class PromptsStage(Stage):
    name = "prompts"

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        p = ctx.cfg.prompts
        sets = [s for specs in p.eval_sets.values() for s in specs]
        files = [s.path for s in (*p.sources, *p.test, *p.ood, *sets)]
        return {
            "config": hashed_prompts_config(p, prompt_limit(ctx.cfg, ctx.teacher)),
            "files": {f: file_hash(ctx.cfg.resolve(f)) for f in files},
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        stats = run_prompts(ctx.cfg.prompts, ctx.cfg.base_dir, out, prompt_limit(ctx.cfg, ctx.teacher))
        say(
            "  prompts: "
            + ", ".join(f"{k}={v}" for k, v in (stats | stats.get("eval_sets", {})).items() if isinstance(v, int))
            + "; dropped "
            + ", ".join(f"{k}={v}" for k, v in stats.get("dropped", {}).items())
        )
        return stats


PROMPTS = PromptsStage()
