"""The ``expand:`` section of a run config: which expansion methods run, how often, and their settings.

Every method picks a ``share`` of the training prompts (a seeded hash of each prompt id, so the
choice of one method never depends on another's settings) and makes ``copies`` expansions of each.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..section import Section
from . import phrases as P
from .phrases import CONTEXTS, DEFAULT_INSTRUCTIONS, GREETINGS, INTROS, JOINERS, POLITENESS, SIGNOFFS


def check_weights(weights: dict) -> dict:
    """Relative weights: none negative, some positive."""
    if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    return weights


class MethodSettings(Section):
    """How many expansions one method makes."""

    enabled: bool = Field(True, description="Run this method.")
    share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Share of the training prompts this method expands (chosen by a seeded hash of each prompt id).",
    )
    copies: int = Field(1, ge=1, le=32, description="Expansions made from each chosen prompt.")


class RuleSettings(MethodSettings):
    """A rule-based perturbation of the last user message."""

    rate: float = Field(
        0.1, ge=0, le=1, description="Share of the eligible words changed (at least one when > 0); 0 changes nothing."
    )


class CasingSettings(RuleSettings):
    """Case changes: each copy picks one style and applies it to each word with probability ``rate``."""

    rate: float = Field(1.0, ge=0, le=1, description="Share of the words whose case is changed; 0 changes nothing.")
    styles: dict[Literal["lower", "upper", "capitalize"], float] = Field(
        {"lower": 0.8, "upper": 0.2},
        min_length=1,
        description="Relative weights of the styles: lower ('how do i'), upper ('HOW DO I'), capitalize ('How Do I').",
    )

    @field_validator("styles")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        return check_weights(v)


class PunctuationSettings(RuleSettings):
    """Punctuation changes: each mark (. , ! ? ; : ') is changed with probability ``rate``."""

    rate: float = Field(0.5, ge=0, le=1, description="Share of the punctuation marks changed; 0 changes nothing.")
    ops: dict[Literal["drop", "repeat", "space", "swap"], float] = Field(
        {"drop": 0.6, "repeat": 0.2, "space": 0.1, "swap": 0.1},
        min_length=1,
        description="Relative weights of the changes: drop the mark, repeat it ('??'), put a space before it, "
        "swap '?' with '.' or '!'.",
    )

    @field_validator("ops")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        return check_weights(v)


class WrapSettings(MethodSettings):
    """Conversational wrappers around the last user message; at least one part is always added."""

    share: float = Field(0.3, ge=0, le=1, description="Share of the training prompts wrapped.")
    greeting_rate: float = Field(0.5, ge=0, le=1, description="Probability of a greeting before the message.")
    context_rate: float = Field(0.4, ge=0, le=1, description="Probability of a context sentence before the message.")
    politeness_rate: float = Field(0.3, ge=0, le=1, description="Probability of a polite lead-in to the question.")
    signoff_rate: float = Field(0.4, ge=0, le=1, description="Probability of a sign-off after the message.")
    newline_rate: float = Field(
        0.2, ge=0, le=1, description="Probability that the parts are joined by a line break instead of a space."
    )
    greetings: list[str] = Field(GREETINGS, min_length=1, description="Greetings (replace the built-in list).")
    contexts: list[str] = Field(CONTEXTS, min_length=1, description="Context sentences said before the question.")
    politeness: list[str] = Field(
        POLITENESS,
        min_length=1,
        description="Lead-ins; the question's first letter is lower-cased after one that ends in a comma or a word.",
    )
    signoffs: list[str] = Field(SIGNOFFS, min_length=1, description="Sign-offs (thanks, closings).")


class ComposeSettings(MethodSettings):
    """Several training prompts joined into one message (each chosen prompt is the first part)."""

    share: float = Field(0.2, ge=0, le=1, description="Share of the training prompts that start a composed message.")
    min_parts: int = Field(2, ge=2, le=8, description="Fewest prompts joined into one message.")
    max_parts: int = Field(2, ge=2, le=8, description="Most prompts joined into one message.")
    same_category: bool = Field(False, description="Join only prompts of the same category.")
    joiners: list[str] = Field(
        JOINERS,
        min_length=1,
        description="Text put between two parts; the next part's "
        "first letter is lower-cased after one that ends in a comma or a word.",
    )
    intros: list[str] = Field(INTROS, min_length=1, description="Openers said before the first part.")
    intro_rate: float = Field(0.3, ge=0, le=1, description="Probability of an opener.")
    numbered_rate: float = Field(
        0.15, ge=0, le=1, description="Probability of a numbered list ('1. ... 2. ...') instead of joiners."
    )

    @model_validator(mode="after")
    def _parts(self):
        if self.max_parts < self.min_parts:
            raise ValueError("max_parts must be >= min_parts")
        return self


def phrase_key(phrase: str) -> str:
    """A phrase as compared for overlap: lower-cased, punctuation dropped, spaces collapsed ('' for a line break)."""
    return " ".join(re.sub(r"[^\w' ]+", " ", phrase.lower()).split())


class ValidationPhrases(Section):
    """The phrase lists of the validation copies' wrappers and compositions, in place of the training lists."""

    greetings: list[str] = Field(P.VALIDATION_GREETINGS, min_length=1, description="Greetings.")
    contexts: list[str] = Field(P.VALIDATION_CONTEXTS, min_length=1, description="Context sentences.")
    politeness: list[str] = Field(P.VALIDATION_POLITENESS, min_length=1, description="Lead-ins.")
    signoffs: list[str] = Field(P.VALIDATION_SIGNOFFS, min_length=1, description="Sign-offs.")
    joiners: list[str] = Field(P.VALIDATION_JOINERS, min_length=1, description="Text put between two parts.")
    intros: list[str] = Field(P.VALIDATION_INTROS, min_length=1, description="Openers said before the first part.")

    def applied(self, wrap: WrapSettings, compose: ComposeSettings) -> tuple[WrapSettings, ComposeSettings]:
        """``wrap`` and ``compose`` with these lists in place of theirs (every other setting kept)."""
        lists = self.model_dump()
        return (
            wrap.model_copy(update={k: lists[k] for k in ("greetings", "contexts", "politeness", "signoffs")}),
            compose.model_copy(update={k: lists[k] for k in ("joiners", "intros")}),
        )

    def shared_with(self, wrap: WrapSettings, compose: ComposeSettings) -> tuple[str, str, str] | None:
        """The first (list name, validation phrase, training phrase) that say the same, if any."""
        for name, phrases in self.model_dump().items():
            training = {phrase_key(t): t for t in getattr(wrap if hasattr(wrap, name) else compose, name)}
            for phrase in phrases:
                if phrase_key(phrase) in training:
                    return name, phrase, training[phrase_key(phrase)]
        return None


class Instruction(Section):
    """One writer instruction; ``{prompt}`` is replaced by the seed prompt's last user message."""

    name: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Short name, kept in each rewrite's meta."
    )
    method: Literal["paraphrase", "evolve"] = Field(
        description="paraphrase: same request in other words; "
        "evolve: a changed request (more casual, specific, constrained)."
    )
    template: str = Field(min_length=1, description="The message sent to the writer; must contain {prompt}.")

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain {prompt} (where the seed prompt goes)")
        return v


def _default_instructions() -> list[Instruction]:
    return [Instruction(**i) for i in DEFAULT_INSTRUCTIONS]


class WriterSettings(MethodSettings):
    """A writer model rewrites seed prompts (paraphrase / evolve), cached and resumable like teacher answers."""

    enabled: bool = Field(
        False, description="Run the writer (needs `model`, or a `cache_file` that covers every seed)."
    )
    share: float = Field(0.5, ge=0, le=1, description="Share of the training prompts rewritten.")
    copies: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Instructions applied per chosen prompt, drawn without repeats (none: all of them).",
    )
    model: str | None = Field(
        None,
        description="Local Hugging Face model directory, 'vllm:DIR', 'openai:MODEL' or "
        "'anthropic:MODEL' (as teacher.model); relative to the config file.",
    )
    instructions: list[Instruction] = Field(
        default_factory=_default_instructions,
        min_length=1,
        description="Instruction templates (replace the built-in ones).",
    )
    system_prompt: str | None = Field(None, description="System message sent to the writer before each instruction.")
    cache_file: str | None = Field(
        None,
        description="JSONL of shipped rewrites (written by `python -m "
        "potstill.expand.rewrites RUN/expand OUT.jsonl`); when present, rewrites are read from it and only "
        "missing ones are generated.",
    )
    max_new_tokens: int = Field(96, ge=1, le=8192, description="Most tokens of one rewrite.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with do_sample).")
    batch_size: int = Field(16, ge=1, description="Prompts generated together (local writer).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype (local writer).")
    base_url: str | None = Field(None, description="API endpoint of an API writer (as teacher.base_url).")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the writer's API key."
    )
    concurrency: int = Field(8, ge=1, le=1024, description="API requests in flight at once.")
    max_cost: float | None = Field(None, ge=0, description="Stop when the writer's API spend (USD) would exceed this.")
    min_chars: int = Field(3, ge=1, description="Shortest rewrite kept (characters).")
    max_chars: int = Field(2000, ge=1, description="Longest rewrite kept (characters).")
    max_length_ratio: float = Field(4.0, gt=1, description="Longest rewrite kept, as a multiple of the seed's length.")

    @field_validator("instructions")
    @classmethod
    def _unique(cls, v: list[Instruction]) -> list[Instruction]:
        names = [i.name for i in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"instruction name {dup!r} is used twice")
        return v

    @model_validator(mode="after")
    def _source(self):
        if self.enabled and not (self.model or self.cache_file):
            raise ValueError("the writer needs `model` or `cache_file`")
        api = str(self.model).partition(":")[0] in ("openai", "anthropic") and ":" in str(self.model)
        if self.base_url is not None and not api:
            raise ValueError("base_url is only for API writers (model 'openai:MODEL' or 'anthropic:MODEL')")
        return self


class ExpandConfig(Section):
    """The expand stage: grow the training prompts (train only) with perturbed, wrapped, composed, rewritten copies."""

    enabled: bool = Field(False, description="Run the expand stage between prompts and generate.")
    validation: bool = Field(
        False,
        description="Also perturb, wrap and compose the validation prompts (the same rules and settings, no "
        "writer) into the held-out split `validation_expanded` (RUN/expand_validation/), a robustness check that "
        "eval.splits and potstill tune can use where plain validation saturates; on or off with `enabled`.",
    )
    seed: int | None = Field(None, description="Seed of every random choice (default: the run's seed).")
    max_total: int | None = Field(
        None, ge=0, description="Most expansions kept (a seeded sample, after dedup and the contamination check)."
    )
    near_dup_threshold: float = Field(
        0.9,
        ge=0.5,
        le=1.0,
        description="Estimated Jaccard similarity of word "
        "3-shingles above which an expansion is a near duplicate and dropped.",
    )
    protect: str = Field(
        r"\d",
        description="Regex: words in which it matches are never changed by typo, swap and "
        "dropout (default: words with digits, e.g. codes, prices, versions).",
    )
    typo: RuleSettings = Field(
        default_factory=lambda: RuleSettings(share=0.3),
        description="Keyboard typos (nlpaug KeyboardAug): a neighbouring key in each changed word.",
    )
    swap: RuleSettings = Field(
        default_factory=lambda: RuleSettings(share=0.2),
        description="Swapped adjacent characters (nlpaug RandomCharAug swap).",
    )
    dropout: RuleSettings = Field(
        default_factory=lambda: RuleSettings(share=0.2), description="Dropped words (nlpaug RandomWordAug delete)."
    )
    casing: CasingSettings = Field(
        default_factory=lambda: CasingSettings(share=0.2),
        description="Case changes (all lower-case, SHOUTING, Title Case).",
    )
    punctuation: PunctuationSettings = Field(
        default_factory=lambda: PunctuationSettings(share=0.2),
        description="Dropped, repeated, spaced or swapped punctuation.",
    )
    wrap: WrapSettings = Field(default_factory=WrapSettings, description="Greetings, context, politeness, sign-offs.")
    compose: ComposeSettings = Field(default_factory=ComposeSettings, description="Several questions in one message.")
    writer: WriterSettings = Field(
        default_factory=WriterSettings, description="Writer-model paraphrases and Evol-Instruct-style rewrites."
    )
    validation_phrases: ValidationPhrases = Field(
        default_factory=ValidationPhrases,
        description="Phrase lists of the validation copies' wrappers and compositions (`expand.validation`); they "
        "must share no phrase with the training lists (`wrap`, `compose`), so validation_expanded asks in phrasing "
        "that no training expansion used.",
    )

    @model_validator(mode="after")
    def _held_out(self):
        shared = self.validation_phrases.shared_with(self.wrap, self.compose)
        if shared:
            name, phrase, training = shared
            where = "wrap" if hasattr(self.wrap, name) else "compose"
            raise ValueError(
                f"validation_phrases.{name} has {phrase!r}, which says what {where}.{name} has ({training!r}): "
                "validation phrases must be held out from training"
            )
        return self

    @field_validator("protect")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regex ({e})") from None
        return v


RUN_ONLY_WRITER_FIELDS = {"api_key_env", "concurrency", "max_cost", "cache_file"}
VALIDATION_FOLDER = "expand_validation"  # the expand stage's folder of the split `validation_expanded`


def hashed_expand_config(cfg: ExpandConfig) -> dict:
    """The settings that decide the training expansions (the ``expand`` folder's config input): the
    writer's run-only settings (key, concurrency, budget, the cache file's path) change no rewrite and
    are left out (hash the cache file's content separately), the whole writer when it is off, and
    ``validation`` and ``validation_phrases``, which only decide the :data:`VALIDATION_FOLDER` folder."""
    writer = RUN_ONLY_WRITER_FIELDS if cfg.writer.enabled else True  # a writer that is off changes nothing
    return cfg.model_dump(
        mode="json",
        exclude={"enabled": True, "validation": True, "validation_phrases": True, "writer": writer},
        exclude_defaults=True,
    )


def hashed_validation_config(cfg: ExpandConfig) -> dict:
    """The settings that decide the validation expansions (the :data:`VALIDATION_FOLDER` folder's
    config input): those of the rules, wrappers and composition, the seed and the dedup threshold, and
    the validation phrase lists (always, built-in ones too: they are what makes the copies held out); not
    the switches, the writer or ``max_total`` (training expansions only)."""
    hashed = cfg.model_dump(
        mode="json",
        exclude={"enabled", "validation", "writer", "max_total", "validation_phrases"},
        exclude_defaults=True,
    )
    return hashed | {"validation_phrases": cfg.validation_phrases.model_dump(mode="json")}
