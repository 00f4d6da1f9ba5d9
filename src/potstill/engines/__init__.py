"""Inference engines: how a local model generates, chosen once for every stage that generates.

* ``hf`` - transformers ``generate`` in eager PyTorch (:class:`potstill.teachers.hf.LocalGenerator`);
  the reference, and the only engine that can run an untrained (random or pruned) model.
* ``ct2`` - CTranslate2 at the model's dtype (float32 on a CPU), converted once per model
  (:mod:`potstill.engines.ct2`); its greedy answers equal ``hf``'s up to float rounding.
* ``ct2-int8`` - CTranslate2 with int8 weights: fastest on a CPU, answers close to but not always
  the same as ``hf``'s (``benchmarks/engines.py`` measures how close).
* ``vllm`` - vLLM on a GPU (:mod:`potstill.teachers.vllm`): teacher generation and signal capture only.

Every engine gives the records of :mod:`potstill.teachers.base` (with the top-k log-probs of each
step when asked). Config: ``teacher.engine``, ``eval.engine``, ``eval.latency.engines``; the server:
``potstill serve --engine``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

ENGINES = ("hf", "ct2", "ct2-int8", "vllm")
LOCAL_ENGINES = ("hf", "ct2", "ct2-int8")  # what evaluation, measuring, routing and serving run on
DEFAULT_ENGINE = "ct2"


def check_engine(name: str, where: str, allowed: tuple[str, ...] = ENGINES) -> str:
    """``name`` if it is one of ``allowed``, else a one-line :class:`UserError` naming ``where``."""
    if name not in allowed:
        raise UserError(f"unknown engine {name!r} (expected one of: {', '.join(allowed)})", where)
    return name


def make_generator(
    engine: str,
    path: str | Path,
    *,
    dtype: str = "float32",
    init: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
):
    """A generator (``generate`` / ``generate_batch``, ``tokenizer``, ``params``) of the model at ``path``
    on ``engine`` (one of :data:`LOCAL_ENGINES`). A model that is not trained yet (``init`` other than
    ``pretrained``: the floor) has no weights to convert and runs on ``hf``."""
    check_engine(engine, "engine", LOCAL_ENGINES)
    if engine == "hf" or init != "pretrained":
        from ..teachers.hf import LocalGenerator  # defers torch/transformers

        return LocalGenerator(path, dtype=dtype, init=init, seed=seed, device=device)
    from .ct2 import CT2Generator  # defers ctranslate2

    return CT2Generator(path, engine=engine, dtype=dtype, device=device, seed=seed)
