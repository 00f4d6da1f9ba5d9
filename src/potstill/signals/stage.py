"""The capture stage: ``RUN/signals/`` from the teacher and the generate stage's answers.

Skipped when its inputs (capture settings, teacher hash, generate stage, seed) are unchanged;
partial shards live in ``RUN/.work/signals/<hash>/`` so a killed capture resumes by shard.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from ..progress import say

STAGE = "signals"


def capture_settings(cfg: RunConfig, fmt=None, k=None, draws=None, temperature=None, batch_size=None,
                     sampling=None) -> dict:
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


def run_capture(cfg: RunConfig, force=(), **overrides) -> Path:
    """Capture the teacher's signals for the run's training pairs into ``RUN/signals``; returns it.

    ``overrides``: ``fmt``, ``k``, ``draws``, ``temperature``, ``batch_size``, ``sampling``
    (see :func:`capture_settings`). ``force`` containing ``"signals"`` or ``"capture"`` redoes it.
    """
    from ..pipeline import Pipeline, model_hash
    from ..run_dir import RunDir
    from .capture import capture_signals

    teacher = cfg.teacher_dir()
    if teacher is None or not (teacher / "config.json").is_file():
        raise UserError("capture needs the teacher as a local model directory (an API teacher's signals are "
                        "its top_logprobs: use train.kd.signal=topk)", str(cfg.teacher.model))
    s = capture_settings(cfg, **overrides)
    pipe = Pipeline(cfg)
    gen_hash = pipe._need("generate")
    t_hash = model_hash(teacher)
    inputs = {"capture": s, "teacher": t_hash, "generate": gen_hash, "seed": cfg.seed}
    force = {"signals"} if {"signals", "capture"} & set(force or ()) else set()
    run_dir = RunDir(cfg.run_path, force)

    def build(out: Path, work: Path) -> dict:
        m = capture_signals(
            teacher, pipe.pairs(), out, fmt=s["fmt"], k=s["k"], draws=s["draws"], temperature=s["temperature"],
            batch_size=s["batch_size"], seed=cfg.seed, sampling=s["sampling"], dtype=s["dtype"], work_dir=work,
            teacher_hash=t_hash, vllm=cfg.teacher.vllm if cfg.teacher.model.startswith("vllm:") else None,
        )
        say(f"  signals: {m['format']} store, {m['examples']} examples, {m['positions']} tokens, "
            f"{m['bytes_per_token']} bytes/token")
        return {"format": m["format"], "examples": m["examples"], "positions": m["positions"],
                "bytes_per_token": m["bytes_per_token"]}

    run_dir.run(STAGE, inputs, build)
    return run_dir.path(STAGE)
