"""The prompts section of the run config."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from .load import SourceSpec

HELD_OUT = ("validation", "test", "ood")  # the built-in evaluation splits
EXPANDED_VALIDATION = "validation_expanded"  # perturbed validation prompts, made by the expand stage
SET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def config_key_error(key: str, message: str) -> PydanticCustomError:
    """A validation error that names its own config key (a check over several keys, or a dict's key):
    :func:`potstill.config.format_validation_errors` prints it as one line, without the input."""
    return PydanticCustomError("config_key", "{message}", {"key": key, "message": message})


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
    eval_sets: dict[str, list[SourceSpec]] = Field(
        default_factory=dict,
        description="Named extra evaluation sets, e.g. `{handwritten: [{path: hand.jsonl}]}`: each is its own "
        "split like `ood` (deduplicated, written as `NAME.jsonl`, prompts equal to a training prompt dropped, "
        "never in train), evaluated when its name is in `eval.splits`. Names: lower case, `[a-z][a-z0-9_]*`, "
        "not train/validation/test/ood.",
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

    @field_validator("eval_sets")
    @classmethod
    def _set_names(cls, v: dict[str, list[SourceSpec]]) -> dict[str, list[SourceSpec]]:
        for name in v:
            if not SET_NAME.match(name):
                why = "must be lower case letters, digits and _, starting with a letter"
            elif name in ("train", *HELD_OUT):
                why = "is a built-in split (train, validation, test, ood): pick another name"
            elif name == EXPANDED_VALIDATION:
                why = "is the split that expand.validation makes: pick another name"
            else:
                continue
            raise config_key_error("prompts.eval_sets", f"set name {name!r} {why}")
        return v

    def held_out(self) -> tuple[str, ...]:
        """Every evaluation split this config can produce: validation, test, ood, then the eval sets."""
        return (*HELD_OUT, *self.eval_sets)
