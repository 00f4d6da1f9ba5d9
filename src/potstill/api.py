"""The Python API; each function mirrors a CLI subcommand.

>>> from potstill import api
>>> report = api.run("examples/helpdesk/config.yaml", overrides=["train.epochs=1"])
"""

from __future__ import annotations

from pathlib import Path

from . import pipeline
from .config import RunConfig, load_config
from .context import RunContext
from .io import read_json
from .report.stage import read_report
from .route.stage import RouteStage
from .signals.stage import SignalsStage
from .teachers.stage import generate_shard as _generate_shard
from .tune.search import derive as _derive
from .tune.search import tune as _tune


def open_run(config: str | Path | RunConfig, overrides=(), force=()) -> RunContext:
    """The run context of a config file (or a loaded config) with dotted overrides and ``--force`` stages."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
    return pipeline.open_run(cfg, set(force))


def run(config, overrides=(), force=()) -> dict:
    """The whole pipeline; returns the report dict (``report.json``)."""
    return pipeline.run_all(open_run(config, overrides, force))


def stages(config, names, overrides=(), force=()) -> RunContext:
    """The named stages only (each needs the stages before it done in the same run directory)."""
    ctx = open_run(config, overrides, force)
    pipeline.run_stages(ctx, names)
    return ctx


def prompts(config, overrides=(), force=()) -> str:
    """Load, dedup and split the prompts."""
    return stages(config, ["prompts"], overrides, force).hashes["prompts"]


def generate(config, overrides=(), force=()) -> str:
    """The teacher answers the training prompts."""
    return stages(config, ["generate"], overrides, force).hashes["generate"]


def generate_shard(config, shard: tuple[int, int], overrides=(), force=()) -> str:
    """One data-parallel part ``(I, N)`` of the generate stage (merged by a later :func:`generate`)."""
    return _generate_shard(open_run(config, overrides, force), shard)


def capture(config, overrides=(), force=(), **settings) -> Path:
    """The teacher's soft labels over the training pairs (``RUN/signals``); ``settings`` override the
    config's (:func:`potstill.signals.stage.capture_settings`)."""
    ctx = open_run(config, overrides, force)
    SignalsStage(settings, always=True).run(ctx)
    return ctx.path("signals")


def train(config, overrides=(), force=(), methods=None) -> list[str]:
    """Train one student per method (default: the config's methods), capturing signals first when needed."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
    if methods:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"methods": list(methods)})})
    ctx = pipeline.open_run(cfg, set(force))
    pipeline.run_stages(ctx, ["signals", "train"])
    return [ctx.hashes[f"students/{m}"] for m in cfg.train.methods]


def evaluate(config, overrides=(), force=()) -> str:
    """Teacher, students and floor answer the evaluation splits."""
    return stages(config, ["eval"], overrides, force).hashes["eval"]


def route(config, overrides=(), force=()) -> dict:
    """Every stage up to measuring (skipping those done), then calibrate the student → teacher cascade;
    returns ``route.json``'s content and its ``path``."""
    ctx = open_run(config, overrides, force)
    pipeline.run_all(ctx, until="measure")
    RouteStage(required=True).run(ctx)
    path = ctx.path("route") / "route.json"
    return {**read_json(path), "path": str(path)}


def report(config, overrides=(), force=()) -> dict:
    """Measure speed/memory, calibrate routing (when enabled), then write report.md / report.html / report.json."""
    ctx = stages(config, ["measure", "route", "report"], overrides, force)
    return read_report(ctx)


def tune(config, overrides=(), force=(), trials=None, timeout_s=None, method=None) -> dict:
    """Search the training settings on the validation split (``validation_expanded`` with expand.validation;
    ``tune:`` in the config, the arguments override it); returns the study's trials, the split, the best
    one and where ``best.yaml`` is (:mod:`potstill.tune.search`)."""
    given = {"trials": trials, "timeout_s": timeout_s, "method": method}
    extra = [f"tune.{k}={v}" for k, v in given.items() if v is not None]
    cfg = config if isinstance(config, RunConfig) else load_config(config, [*overrides, *extra])
    if isinstance(config, RunConfig) and extra:
        cfg = _derive(cfg, extra, source="tune")
    return _tune(cfg, set(force))
