"""The Python API; each function mirrors a CLI subcommand.

>>> from potstill import api
>>> report = api.run("examples/helpdesk/config.yaml", overrides=["train.epochs=1"])
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_config
from .pipeline import Pipeline


def _pipeline(config: str | Path | RunConfig, overrides=(), force=()) -> Pipeline:
    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
    return Pipeline(cfg, set(force))


def run(config, overrides=(), force=()) -> dict:
    """The whole pipeline; returns the report dict (``report.json``)."""
    return _pipeline(config, overrides, force).run_all()


def prompts(config, overrides=(), force=()) -> str:
    """Load, dedup and split the prompts."""
    return _pipeline(config, overrides, force).prompts()


def generate(config, overrides=(), force=()) -> str:
    """The teacher answers the training prompts."""
    return _pipeline(config, overrides, force).generate()


def train(config, overrides=(), force=(), methods=None) -> list[str]:
    """Train one student per method (default: the config's methods)."""
    p = _pipeline(config, overrides, force)
    return [p.train(m) for m in (methods or p.cfg.train.methods)]


def evaluate(config, overrides=(), force=()) -> str:
    """Teacher, students and floor answer the evaluation splits."""
    return _pipeline(config, overrides, force).evaluate()


def route(config, overrides=(), force=()) -> dict:
    """Every stage up to routing (skipping those done), then calibrate the student → teacher cascade;
    returns ``route.json``'s content and its ``path``."""
    from .io import read_json

    p = _pipeline(config, overrides, force)
    p.run_all(until="route")
    path = p.run_dir.path("route") / "route.json"
    return {**read_json(path), "path": str(path)}


def report(config, overrides=(), force=()) -> dict:
    """Measure speed/memory, calibrate routing (when enabled), then write report.md / report.html / report.json."""
    p = _pipeline(config, overrides, force)
    p.measure()
    p.route()
    return p.report()
