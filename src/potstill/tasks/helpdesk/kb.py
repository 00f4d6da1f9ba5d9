"""The helpdesk knowledge base: loading, validation and the text normalisation its facts use.

A fact is stated by a text when every one of its ``required`` phrases occurs in the normalised
text as a whole-token phrase (``"$9"`` does not match ``"$99"``, ``"2 gb"`` does not match
``"20 gb"``). Normalisation lower-cases, drops punctuation other than ``$``, ``%`` and decimal
points, splits numbers from units (``2GB`` -> ``2 gb``), removes thousands separators, maps a few
unit synonyms and plurals (``users`` -> ``user``, ``/mo`` -> ``month``, ``percent`` -> ``%``) and
small number words (``one`` -> ``1``). See ``examples/helpdesk/README.md`` for the file format.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

KB_PATH = Path(__file__).with_name("kb.json")
CATEGORIES = ("plans", "limits", "policies", "errors", "howto")

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update(thirty="30", forty="40", fifty="50", sixty="60", ninety="90")
_CANON = {
    "gigabyte": "gb",
    "gigabytes": "gb",
    "megabyte": "mb",
    "megabytes": "mb",
    "terabyte": "tb",
    "terabytes": "tb",
    "mo": "month",
    "months": "month",
    "monthly": "month",
    "yr": "year",
    "years": "year",
    "days": "day",
    "hours": "hour",
    "hrs": "hour",
    "hr": "hour",
    "minutes": "minute",
    "min": "minute",
    "mins": "minute",
    "seconds": "second",
    "users": "user",
    "seats": "seat",
    "members": "member",
    "requests": "request",
    "characters": "character",
    "chars": "character",
    "notebooks": "notebook",
    "tags": "tag",
    "webhooks": "webhook",
    "guests": "guest",
    "levels": "level",
    "notes": "note",
    "reminders": "reminder",
    "devices": "device",
    "percent": "%",
    "pct": "%",
}
_TOKEN = re.compile(r"\$?\d+(?:\.\d+)?%?|[a-z]+")


def normalize(text: str) -> str:
    """Canonical form used for matching: space-separated lower-case tokens.

    >>> normalize("Pro costs $14/mo. (100GB, 10 Users)")
    'pro costs $14 month 100 gb 10 user'
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\$\s+(?=\d)", "$", text)  # $ 14 -> $14
    text = re.sub(r"(?<=\d)\.0+\b", "", text)  # $14.00 -> $14
    text = re.sub(r"(?<=\d)\s+%", "%", text)  # 20 % -> 20%
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        tok = _NUMBER_WORDS.get(tok, _CANON.get(tok, tok))
        if tok == "%" and out and out[-1][-1:].isdigit():  # 20 percent -> 20%
            out[-1] += "%"
        else:
            out.append(tok)
    return " ".join(out)


_normalize_cached = lru_cache(maxsize=4096)(normalize)


def has_phrase(normalized_text: str, phrase: str) -> bool:
    """True when the (normalised) ``phrase`` occurs in ``normalized_text`` on token boundaries."""
    return f" {_normalize_cached(phrase)} " in f" {normalized_text} "


@dataclass(frozen=True)
class Fact:
    """One atomic fact: ``entity``'s ``attribute`` is ``value``; ``required`` phrases state it."""

    id: str
    category: str
    entity: str
    attribute: str
    value: str
    required: tuple[str, ...]
    mentions: tuple[str, ...] = ()

    def stated_in(self, normalized_text: str) -> bool:
        """True when every required phrase occurs in the normalised text."""
        return all(has_phrase(normalized_text, r) for r in self.required)


@dataclass
class KnowledgeBase:
    """The product's facts, indexed by id and by (category, attribute) group."""

    product: str
    facts: list[Fact]
    description: str = ""
    by_id: dict[str, Fact] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {f.id: f for f in self.facts}

    def group(self, fact: Fact) -> list[Fact]:
        """Facts with the same category and attribute as ``fact`` (including itself)."""
        return [g for g in self.facts if (g.category, g.attribute) == (fact.category, fact.attribute)]

    def categories(self) -> list[str]:
        """Categories present, in the canonical order."""
        present = {f.category for f in self.facts}
        return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


class KBError(ValueError):
    """The knowledge-base file is malformed or ambiguous."""


def validate(kb: KnowledgeBase) -> None:
    """Raise ``KBError`` unless ids are unique, fields are non-empty, every fact's value states
    the fact, and no value states a different fact of the same (category, attribute) group."""
    seen: set[str] = set()
    for f in kb.facts:
        where = f"fact {f.id!r}"
        if f.id in seen:
            raise KBError(f"duplicate fact id {f.id!r}")
        seen.add(f.id)
        for name in ("id", "category", "entity", "attribute", "value"):
            if not isinstance(getattr(f, name), str) or not getattr(f, name).strip():
                raise KBError(f"{where}: field {name!r} must be a non-empty string")
        if not f.required or any(not normalize(r) for r in f.required):
            raise KBError(f"{where}: 'required' must be a non-empty list of non-empty phrases")
        value = normalize(f.value)
        if not f.stated_in(value):
            raise KBError(f"{where}: value {f.value!r} does not contain {list(f.required)}")
        for g in kb.group(f):
            if g.id != f.id and g.stated_in(value):
                raise KBError(f"{where}: value {f.value!r} also states {g.id!r}; make 'required' more specific")


def _fact(d: dict) -> Fact:
    try:
        return Fact(
            id=d["id"],
            category=d["category"],
            entity=d["entity"],
            attribute=d["attribute"],
            value=d["value"],
            required=tuple(d["required"]),
            mentions=tuple(d.get("mentions", ())),
        )
    except (KeyError, TypeError) as e:
        raise KBError(f"malformed fact {d!r}: missing or bad field {e}") from None


def load_kb(path: str | Path | None = None) -> KnowledgeBase:
    """Load and validate a knowledge base; ``None`` means the packaged ``kb.json`` (cached)."""
    return _load(str(Path(path).resolve()) if path is not None else str(KB_PATH))


@lru_cache(maxsize=8)
def _load(path: str) -> KnowledgeBase:
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    kb = KnowledgeBase(
        product=raw.get("product", ""),
        description=raw.get("description", ""),
        facts=[_fact(d) for d in raw.get("facts", [])],
    )
    validate(kb)
    return kb
