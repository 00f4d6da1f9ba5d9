"""The generation record, its settings, and the batching loop shared by every local generator.

A generation record (one JSON line of ``generations.jsonl``)::

    {"id": str, "text": str, "token_ids": [int] | None, "finish_reason": "stop" | "length",
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "top_logprobs": [[[token_id, logprob], ...] per generated token] | None}

``token_ids`` include the final end-of-sequence token when ``finish_reason == "stop"``;
``top_logprobs`` are the teacher's k most likely tokens at each generated position, as natural-log
probabilities of the untempered (T=1) distribution.

:class:`PromptGenerator` is the loop (prompt encoding, length-sorted batches, ``on_batch``) that the
transformers (:mod:`potstill.teachers.hf`), CTranslate2 (:mod:`potstill.engines.ct2`) and vLLM
(:mod:`potstill.teachers.vllm`) generators share; each supplies ``generate_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_prompt
from ..errors import UserError


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are decoded."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_logprobs: int = 0
    batch_size: int = 16
    seed: int = 0


def eos_set(eos, tokenizer) -> set[int]:
    """The ids that end an answer: the generation config's ``eos_token_id`` (one id or a list) and the
    tokenizer's end-of-sequence token."""
    ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def make_record(tokenizer, prompt_len: int, ids: list[int], eos_ids: set[int], top=None) -> dict:
    """A generation record (no ``id``) for the generated ``ids``: cut after the first end-of-sequence
    token (kept in ``token_ids``, not in ``text``); ``top``: ``[[(token_id, logprob), ...] per
    generated token]`` or None."""
    finish = "length"
    for j, t in enumerate(ids):
        if t in eos_ids:
            ids, finish = ids[: j + 1], "stop"
            break
    text_ids = ids[:-1] if finish == "stop" else ids
    rec = {
        "text": tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
        "token_ids": ids,
        "finish_reason": finish,
        "usage": {"prompt_tokens": prompt_len, "completion_tokens": len(ids)},
        "top_logprobs": None,
    }
    if top is not None:
        rec["top_logprobs"] = [[[int(t), round(float(v), 6)] for t, v in top[j]] for j in range(len(ids))]
    return rec


class PromptGenerator:
    """The batching loop over prompt records; subclasses set ``tokenizer``, ``context``, ``path`` and
    implement ``generate_batch(prompts: list[list[int]], settings) -> list[record without id]``."""

    tokenizer = None
    context: int | None = None
    path: Path | None = None

    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings) -> list[dict]:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Seed the random stream that sampling draws from (torch's, by default)."""
        import torch  # defers torch

        torch.manual_seed(seed)

    def generate(
        self,
        records: list[dict],
        settings: GenerationSettings,
        on_batch: Callable[[list[dict]], None] | None = None,
        check_context: bool = False,
    ) -> Iterator[dict]:
        """Yield one generation record per prompt record, in batches sorted by prompt length.

        ``check_context``: before anything is generated, a prompt that leaves no room for
        ``max_new_tokens`` in the model's context is a one-line :class:`UserError` naming it (the
        teacher's generate stage: the prompts stage should have dropped it).
        """
        if settings.seed is not None:
            self.reseed(settings.seed)
        encoded = [(r, encode_prompt(self.tokenizer, r["messages"])) for r in records]
        encoded.sort(key=lambda x: len(x[1]))
        if check_context:
            lengths = [(r["id"], len(p)) for r, p in encoded]
            check_context_fits(lengths, settings.max_new_tokens, self.context, self.path)
        for start in range(0, len(encoded), settings.batch_size):
            chunk = encoded[start : start + settings.batch_size]
            outs = self.generate_batch([p for _, p in chunk], settings)
            batch = [{"id": r["id"], **o} for (r, _), o in zip(chunk, outs)]
            if on_batch:
                on_batch(batch)
            yield from batch


def check_context_fits(lengths: list[tuple[str, int]], max_new_tokens: int, context: int | None, model: Path) -> None:
    """A one-line :class:`UserError` naming the longest prompt when some ``(id, prompt tokens)`` leave
    no room for ``max_new_tokens`` in ``context`` (None: not known, nothing checked)."""
    if not context:
        return
    over = [(n, rid) for rid, n in lengths if n + max_new_tokens > context]
    if over:
        n, rid = max(over)
        raise UserError(
            f"{len(over)} prompt(s) too long for the teacher: the longest, {rid!r}, has {n:,} tokens, and "
            f"with teacher.max_new_tokens {max_new_tokens} the context is {context:,}; rerun the prompts "
            "stage (--force prompts) to drop them, or set prompts.max_prompt_tokens",
            str(model),
        )
