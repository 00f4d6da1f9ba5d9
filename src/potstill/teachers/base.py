"""The generation record and settings shared by every teacher backend.

A generation record (one JSON line of ``generations.jsonl``)::

    {"id": str, "text": str, "token_ids": [int] | None, "finish_reason": "stop" | "length",
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "top_logprobs": [[[token_id, logprob], ...] per generated token] | None}

``token_ids`` include the final end-of-sequence token when ``finish_reason == "stop"``;
``top_logprobs`` are the teacher's k most likely tokens at each generated position, as natural-log
probabilities of the untempered (T=1) distribution.
"""

from __future__ import annotations

from dataclasses import dataclass


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
