"""The student answers a split exactly as the gateway decodes: greedy, batched, with confidence steps.

Calibration must see the same signals the gateway will compute, so both go through
:func:`potstill.serve.decode.generate_rows` (engine ``hf``) or
:func:`potstill.serve.ct2backend.generate_rows_ct2` (``ct2``, ``ct2-int8``) with ``confidence=True`` rows.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..chat import encode_prompt
from ..engines import LOCAL_ENGINES, check_engine
from ..engines.ct2 import CT2Generator
from ..io import read_jsonl, write_jsonl
from ..progress import track
from ..serve.backend import context_length, fit_context
from ..serve.ct2backend import generate_rows_ct2
from ..serve.decode import Row, generate_rows
from ..teachers.hf import LocalGenerator
from .features import features


def answer_with_confidence(
    model_dir: str | Path,
    records: list[dict],
    max_new_tokens: int,
    batch_size: int = 32,
    dtype: str = "float32",
    engine: str = "hf",
    cache: Path | None = None,
    label: str = "route",
) -> list[dict]:
    """``[{"id", "text", "finish_reason", "features"}]`` for ``records`` (cached in ``cache`` once complete),
    decoded on ``engine`` (``hf``, ``ct2`` or ``ct2-int8``: the engine the gateway's student will run on)."""
    check_engine(engine, "engine", LOCAL_ENGINES)
    if cache is not None and cache.exists():
        rows = read_jsonl(cache)
        if [r["id"] for r in rows] == [r["id"] for r in records]:
            return rows

    if engine == "hf":
        gen = LocalGenerator(model_dir, dtype=dtype)
        context = context_length(gen.model)
        decode = partial(generate_rows, gen.model, gen.tokenizer, gen.eos_ids, device=gen.device)
    else:
        gen = CT2Generator(model_dir, engine=engine, dtype=dtype)
        context = gen.context
        decode = partial(generate_rows_ct2, gen)
    encoded = sorted(
        ((i, encode_prompt(gen.tokenizer, r["messages"])) for i, r in enumerate(records)), key=lambda x: len(x[1])
    )
    out: list[dict | None] = [None] * len(records)
    with track(len(records), label) as bar:
        for start in range(0, len(encoded), batch_size):
            part = encoded[start : start + batch_size]
            rows = []
            for _, prompt in part:
                limit = min(max_new_tokens, context - len(prompt)) if context else max_new_tokens
                rows.append(Row(prompt=prompt, max_tokens=max(limit, 1), confidence=True))
            for group in fit_context(rows, context):
                decode(group)
            for (i, _), row in zip(part, rows):
                out[i] = {
                    "id": records[i]["id"],
                    "text": row.text,
                    "finish_reason": row.finish,
                    "features": features(row.kept_steps()),
                }
            bar.advance(len(part), tokens=sum(len(r.tokens) for r in rows))
    if cache is not None:
        write_jsonl(cache, out)
    return out
