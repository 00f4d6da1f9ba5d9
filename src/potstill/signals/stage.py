"""The signals stage: ``RUN/signals/``, the teacher's soft labels over the training pairs, captured once.

It runs when the kd student trains from a store (``train.kd.signal: store`` with no ``train.kd.store``
of its own), or on demand (``potstill capture``, whose options override the config's). Its hash covers
the capture settings, the teacher's weights, the generate stage and the seed; partial shards live in
``RUN/.work/signals/<hash>/``, so a killed capture resumes by shard.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage
from ..errors import UserError
from ..progress import say
from .capture import capture_signals


def capture_settings(cfg, fmt=None, k=None, draws=None, temperature=None, batch_size=None, sampling=None) -> dict:
    """The capture settings: the config's ``train.kd`` (store_format, store_k, store_draws,
    temperature) and ``teacher`` (batch_size, dtype), overridden by the given arguments."""
    kd = cfg.train.kd
    return {
        "fmt": fmt or kd.store_format,
        "k": int(k if k is not None else kd.store_k),
        "draws": int(draws if draws is not None else kd.store_draws),
        "temperature": float(temperature if temperature is not None else kd.temperature),
        "batch_size": int(batch_size or cfg.teacher.batch_size),
        "sampling": sampling or "systematic",
        "dtype": cfg.teacher.dtype,
    }


def store_needed(cfg) -> bool:
    """Whether a run trains its kd student from the run's own signal store."""
    return "kd" in cfg.train.methods and cfg.train.kd.signal == "store" and not cfg.train.kd.store


class SignalsStage(Stage):
    """``overrides``: capture settings given on the command line (:func:`capture_settings`);
    ``always``: run even when no student needs the store (``potstill capture``)."""

    name = "signals"

    def __init__(self, overrides: dict | None = None, always: bool = False):
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.always = always

    def folders(self, ctx: RunContext) -> list[str]:
        return [self.name] if self.always or store_needed(ctx.cfg) else []

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        if ctx.teacher.kind not in ("local", "gguf", "vllm"):
            raise UserError(
                "capture needs the teacher as a local model directory or GGUF file (an API teacher's "
                "signals are its top_logprobs: use train.kd.signal=topk)",
                "teacher.model",
            )
        return {
            "capture": capture_settings(ctx.cfg, **self.overrides),
            "teacher": ctx.teacher.identity(),
            "generate": ctx.need("generate"),
            "seed": ctx.cfg.seed,
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        s = capture_settings(ctx.cfg, **self.overrides)
        m = capture_signals(
            ctx.teacher.model_dir(),
            ctx.pairs(),
            out,
            fmt=s["fmt"],
            k=s["k"],
            draws=s["draws"],
            temperature=s["temperature"],
            batch_size=s["batch_size"],
            seed=ctx.cfg.seed,
            sampling=s["sampling"],
            dtype=s["dtype"],
            work_dir=work,
            teacher_hash=ctx.teacher.identity(),
            vllm=ctx.cfg.teacher.vllm if ctx.teacher.kind == "vllm" else None,
        )
        say(
            f"  signals: {m['format']} store, {m['examples']} examples, {m['positions']} tokens, "
            f"{m['bytes_per_token']} bytes/token"
        )
        return {
            "format": m["format"],
            "examples": m["examples"],
            "positions": m["positions"],
            "bytes_per_token": m["bytes_per_token"],
        }


SIGNALS = SignalsStage()
