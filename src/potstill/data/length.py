"""Prompt length: count each prompt's tokens and drop (or refuse) those over the teacher's limit.

A prompt is counted as the teacher sees it: the chat template with the generation prompt
(:func:`potstill.chat.encode_prompt`), with the teacher's tokenizer when there is one. Without a
tokenizer (an API teacher with no ``teacher.tokenizer``) the count is an estimate,
:func:`estimate_tokens`: per message the larger of its word count and a quarter of its characters,
plus 4 tokens per message and 3 for the reply's start. It is close for English; a tokenizer that
splits text finer (code, CJK) may count more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..chat import encode_prompt
from ..errors import UserError
from ..io import sha256_dir

TOKENIZER_FILES = (
    "tokenizer*",
    "*.model",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
)


@dataclass(frozen=True)
class PromptLimit:
    """The longest prompt the teacher can take, how it is counted and what happens to a longer one.

    ``max_tokens`` None: no limit. ``tokenizer``: the directory of the tokenizer that counts (None:
    :func:`estimate_tokens`). ``why``: where the limit comes from, for messages.
    """

    max_tokens: int | None = None
    policy: Literal["drop", "error"] = "drop"
    tokenizer: str | None = None
    why: str = "prompts.max_prompt_tokens"

    def inputs(self) -> dict:
        """What the prompts stage's output depends on (its hash): nothing when there is no limit."""
        if self.max_tokens is None:
            return {}

        counted = sha256_dir(self.tokenizer, TOKENIZER_FILES) if self.tokenizer else "estimate"
        return {"max_prompt_tokens": self.max_tokens, "too_long": self.policy, "counted_with": counted}

    def describe(self) -> str:
        how = "the teacher's tokenizer" if self.tokenizer else "an estimate (no tokenizer)"
        return f"{self.max_tokens} tokens ({self.why}; counted with {how})"


def estimate_tokens(messages: list[dict]) -> int:
    """A tokenizer-free prompt length: per message max(words, characters / 4) + 4, plus 3."""
    n = 3
    for m in messages:
        text = str(m.get("content", ""))
        n += max(len(text.split()), -(-len(text) // 4)) + 4
    return n


def prompt_tokens(record: dict, tokenizer=None) -> int:
    """Tokens of ``record``'s prompt as the teacher sees it (an estimate without ``tokenizer``)."""
    if tokenizer is None:
        return estimate_tokens(record["messages"])

    return len(encode_prompt(tokenizer, record["messages"]))


def drop_too_long(
    records: list[dict],
    tokenizer,
    limit: int | None,
    policy: str = "drop",
    origins: Mapping[str, str] | None = None,
    why: str = "prompts.max_prompt_tokens",
) -> tuple[list[dict], int]:
    """The records whose prompt fits in ``limit`` tokens, and how many were dropped.

    ``policy`` ``"error"``: the first prompt over the limit is a :class:`UserError` naming it
    (``origins`` maps ids to ``"file line N"``) and its length. ``limit`` None keeps every record.
    """
    if limit is None:
        return records, 0
    kept = []
    for r in records:
        n = prompt_tokens(r, tokenizer)
        if n <= limit:
            kept.append(r)
            continue
        if policy == "error":
            where = (origins or {}).get(r["id"])
            raise UserError(
                f"prompt {r['id']!r} has {n:,} tokens, over the limit of {limit:,} ({why}); shorten it, "
                "raise prompts.max_prompt_tokens, or set prompts.too_long: drop",
                where,
            )
    return kept, len(records) - len(kept)
