"""The prompts section of the run config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .load import SourceSpec


class PromptsConfig(BaseModel):
    """Configuration of the prompts stage."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceSpec] = Field(
        min_length=1, description="Prompt sources split into train/validation (and test unless `test` is set)."
    )
    test: list[SourceSpec] = Field(
        default_factory=list, description="Explicit test sources; when set they replace the random test split."
    )
    ood: list[SourceSpec] = Field(
        default_factory=list, description="Out-of-distribution sources; always their own split, never in train."
    )
    validation: float = Field(0.1, ge=0.0, le=0.5, description="Fraction of `sources` held out for validation.")
    test_fraction: float = Field(
        0.1, ge=0.0, le=0.5, description="Fraction of `sources` held out for test (ignored when `test` is set)."
    )
    dedup: bool = Field(True, description="Drop exact and near-duplicate prompts (first occurrence kept).")
    near_dup_threshold: float = Field(
        0.9,
        ge=0.5,
        le=1.0,
        description="Estimated Jaccard similarity of word 3-shingles above which two prompts are near duplicates.",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Keep at most this many prompts from `sources` (after dedup, in source order)."
    )
    seed: int = Field(0, description="Seed of the hash-based split and of MinHash.")
    system_prompt: str | None = Field(None, description="System message for sources that set none of their own.")
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest prompt in tokens, chat template included (default: a local teacher's "
        "context, i.e. config.json max_position_embeddings or teacher.vllm.max_model_len, less "
        "teacher.max_new_tokens; an API teacher: no limit). Counted with the teacher's tokenizer (an API "
        "teacher's teacher.tokenizer), else estimated as max(words, characters / 4) + 4 per message, + 3.",
    )
    too_long: Literal["drop", "error"] = Field(
        "drop",
        description="A prompt over max_prompt_tokens: drop it (counted in stats.json as dropped.too_long) "
        "or error (stop, naming the prompt and its length).",
    )
