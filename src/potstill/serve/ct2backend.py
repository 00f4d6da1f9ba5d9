"""The CTranslate2 backend (``potstill serve --engine ct2`` / ``ct2-int8``): :class:`HFBackend`'s API,
batching and rows, decoded by :func:`generate_rows_ct2` on a :class:`potstill.engines.ct2.CT2Generator`.

:func:`generate_rows_ct2` runs one ``generate_batch`` call per sampling setting of a batch (CTranslate2
samples per call, not per row): the greedy rows together, and the sampled rows of each (temperature,
top-p). A callback :func:`potstill.serve.decode.advance`-s each row with every token, so stop strings,
per-row limits and cancelled requests end a row at once, and a streamed row without logprobs streams as
it is decoded. The logprobs (and the ``confidence`` steps the gateway routes on) come from the raw
logits CTranslate2 returns once the call is over, with :class:`potstill.serve.decode.RowController`'s
definitions; so a *streamed* row with logprobs gets its whole text and its entries in its last event.

Seeds: CTranslate2 seeds a thread's random stream once, at the thread's first sample, so
``set_random_seed`` cannot reseed a loaded model. A group with a seed is therefore sampled by a fresh
``ctranslate2.Generator`` of the same converted model (a reload per seeded batch: memory and a moment
more), seeded with its first row's seed. A seeded request repeats its answer when it is alone in its
group (the rows of one request, ``n`` included, always share one); unseeded rows draw from the loaded
model's stream.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..engines import LOCAL_ENGINES, check_engine
from ..engines.ct2 import CT2Generator, import_ct2, step_logits
from ..teachers.base import GenerationSettings
from .backend import HFBackend, model_fingerprint
from .decode import MIN_TEMPERATURE, Row, advance, confidence_step, finalize


class CT2Backend(HFBackend):
    """Serves one model on CTranslate2 (see the module docstring); everything else is :class:`HFBackend`'s."""

    def __init__(self, generator: CT2Generator, model_name: str, *, fingerprint: str | None = None, **kwargs):
        if fingerprint is None:  # int8 weights answer differently: the engine is part of the fingerprint
            key = f"{model_fingerprint(generator.path)}:{generator.engine}:{generator.compute_type}"
            fingerprint = "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]
        super().__init__(generator, model_name, fingerprint=fingerprint, **kwargs)

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        model_name: str | None = None,
        engine: str = "ct2",
        dtype: str = "float32",
        device: str | None = None,
        **kwargs,
    ) -> CT2Backend:
        """Convert (once) and load the model in ``path``; a missing ``ctranslate2`` or an architecture it
        cannot convert is a one-line :class:`potstill.errors.UserError`."""
        gen = CT2Generator(path, engine=engine, dtype=dtype, device=device)
        return cls(gen, model_name or Path(path).resolve().name, **kwargs)

    @staticmethod
    def _context(generator) -> int | None:
        return generator.context

    def _decode(self, rows: list[Row]) -> None:
        generate_rows_ct2(self.gen, rows)


def make_backend(path: str | Path, engine: str = "hf", **kwargs) -> HFBackend:
    """The backend serving the model in ``path`` on ``engine`` (``hf``, ``ct2`` or ``ct2-int8``); ``kwargs``
    go to ``from_dir`` (``model_name``, ``dtype``, ``device``, batching). A bad engine, a missing
    ``ctranslate2`` or a model CTranslate2 cannot convert is a one-line :class:`potstill.errors.UserError`.
    (Here rather than in :mod:`.backend`, which this module imports: no import cycle.)"""
    check_engine(engine, "--engine", LOCAL_ENGINES)
    if engine == "hf":
        return HFBackend.from_dir(path, **kwargs)
    return CT2Backend.from_dir(path, engine=engine, **kwargs)


def sampling_key(r: Row) -> tuple:
    """The ``generate_batch`` call a row can share: ``()`` greedy, else (temperature, top-p, seeded)."""
    if r.temperature < MIN_TEMPERATURE:  # as decode.sample: the limit of sampling is the argmax
        return ()
    return (r.temperature, r.top_p, r.seed is not None)


def generate_rows_ct2(gen: CT2Generator, rows: list[Row]) -> None:
    """Decode ``rows`` with CTranslate2: one ``generate_batch`` call per :func:`sampling_key` (blocking)."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if not r.cancelled.is_set():
            groups.setdefault(sampling_key(r), []).append(r)
    for group in groups.values():
        _generate_group(gen, group)
    for r in rows:
        if r.text is None or r.on_event is not None:
            finalize(r, gen.tokenizer, gen.eos_ids)


def _generate_group(gen: CT2Generator, rows: list[Row]) -> None:
    """One ``generate_batch`` call for rows of one sampling setting, then their logprobs and confidence."""
    first = rows[0]
    sampled = first.temperature >= MIN_TEMPERATURE
    want_logits = any(r.logprobs or r.confidence for r in rows)
    settings = GenerationSettings(
        max_new_tokens=max(r.max_tokens for r in rows),
        do_sample=sampled,
        temperature=first.temperature,
        top_p=first.top_p,
    )
    # a streamed row with logprobs is told everything at the end (its entries exist only then)
    held = {i: r.on_event for i, r in enumerate(rows) if r.logprobs and r.on_event is not None}
    for i in held:
        rows[i].on_event = None
    errors: list[BaseException] = []

    def on_token(step) -> bool:  # always a bool: returning None from a callback aborts CTranslate2 at exit
        r = rows[step.batch_id]
        if r.done or r.cancelled.is_set() or errors:
            return True
        try:
            advance(r, step.token_id, None, gen.tokenizer, gen.eos_ids)
        except BaseException as e:  # an exception must not cross into CTranslate2's thread
            errors.append(e)
        return bool(r.done or r.cancelled.is_set() or errors)

    seed = next((r.seed for r in rows if r.seed is not None), None) if sampled else None
    model = gen.model if seed is None else fresh_model(gen)
    if seed is not None:
        import_ct2().set_random_seed(int(seed))
    results = model.generate_batch(
        [gen.tokens(r.prompt) for r in rows], **gen.options(settings, want_logits), callback=on_token
    )
    del model  # a fresh (seeded) copy goes now
    if errors:
        raise errors[0]
    if want_logits:
        shortest = min(len(r.prompt) for r in rows)
        for r, res in zip(rows, results):
            if (r.logprobs or r.confidence) and r.kept and not r.cancelled.is_set():
                scores = step_logits(res, len(r.prompt) - shortest, len(res.sequences_ids[0]), gen.vocab)
                record_steps(r, scores[: r.kept])
    for i, on_event in held.items():
        rows[i].on_event = on_event
        finalize(rows[i], gen.tokenizer, gen.eos_ids)


def record_steps(r: Row, scores: torch.Tensor) -> None:
    """A row's logprob ``entries`` and ``confidence`` steps from the raw logits ``[kept, vocab]`` of its
    kept tokens (the untempered distribution, as :class:`potstill.serve.decode.RowController` records)."""
    chosen = torch.tensor(r.tokens[: len(scores)])
    if r.confidence:
        r.steps = [tuple(s) for s in confidence_step(scores, chosen).tolist()]
    if r.logprobs:
        lp = torch.log_softmax(scores.float(), dim=-1)
        picked = lp.gather(1, chosen[:, None])[:, 0].tolist()
        tops = [[]] * len(picked)
        if r.k:
            vals, idx = lp.topk(min(r.k, lp.shape[-1]), dim=-1)
            tops = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
        r.entries = list(zip(chosen.tolist(), picked, tops))


def fresh_model(gen: CT2Generator):
    """A new ``ctranslate2.Generator`` of ``gen``'s converted model: its thread has not sampled yet, so
    ``set_random_seed`` still seeds it (see the module docstring)."""
    return import_ct2().Generator(
        str(gen.ct2_dir),
        device=gen.device,
        device_index=gen.model.device_index,
        compute_type=gen.compute_type,
        intra_threads=torch.get_num_threads(),
    )
