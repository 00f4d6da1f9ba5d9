"""Rule-based perturbations of one message: keyboard typos, character swaps, word dropout (nlpaug),
casing and punctuation changes.

Every function is ``f(text, settings, rng_seed, protect) -> text`` and deterministic in ``rng_seed``:
nlpaug draws from the global ``random`` and ``numpy.random`` streams, so each call runs under
:func:`seeded`, which seeds both and restores their previous state afterwards. At ``rate == 0`` the
text is returned unchanged. nlpaug works line by line on whitespace-separated words (its own
tokenizer splits punctuation off words and joins it back with spaces), so line breaks survive.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from .config import CasingSettings, PunctuationSettings, RuleSettings

MARKS = ".,!?;:'"
_WORD = re.compile(r"\S+")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with ``random`` and ``numpy.random`` seeded by ``seed``; restore both afterwards."""
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def _split(line: str) -> list[str]:
    return line.split()


def _join(tokens: list[str]) -> str:
    return " ".join(t for t in tokens if t)


@lru_cache(maxsize=64)
def _augmenter(kind: str, rate: float, protect: str):
    """One nlpaug augmenter per (kind, rate, protect): building one reads its resources."""
    stop = f".*(?:{protect}).*" if protect else None
    common = {"tokenizer": _split, "reverse_tokenizer": _join, "stopwords_regex": stop}
    if kind == "typo":
        import nlpaug.augmenter.char as nac  # defers nlpaug (expand stage only)

        return nac.KeyboardAug(
            aug_word_p=rate,
            aug_word_min=1,
            aug_word_max=None,
            aug_char_min=1,
            aug_char_max=1,
            include_special_char=False,
            include_numeric=False,
            include_upper_case=False,
            **common,
        )
    if kind == "swap":
        import nlpaug.augmenter.char as nac  # defers nlpaug (expand stage only)

        return nac.RandomCharAug(
            action="swap", aug_word_p=rate, aug_word_min=1, aug_word_max=None, aug_char_min=1, aug_char_max=1, **common
        )
    if kind == "dropout":
        import nlpaug.augmenter.word as naw  # defers nlpaug (expand stage only)

        return naw.RandomWordAug(action="delete", aug_p=rate, aug_min=1, aug_max=None, **common)
    raise ValueError(f"unknown nlpaug perturbation {kind!r}")


def _nlpaug(kind: str, text: str, settings: RuleSettings, rng_seed: int, protect: str) -> str:
    if settings.rate == 0 or not text.strip():
        return text
    aug = _augmenter(kind, settings.rate, protect)
    out = []
    with seeded(rng_seed):
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            if body.strip():
                result = aug.augment(body)
                body = result[0] if isinstance(result, list) and result else (result or body)
            out.append(body + line[len(line.rstrip("\r\n")) :])
    return "".join(out)


def typo(text: str, settings: RuleSettings, rng_seed: int, protect: str = r"\d") -> str:
    """Keyboard typos: ``rate`` of the words (at least one) get one character replaced by a neighbouring key."""
    return _nlpaug("typo", text, settings, rng_seed, protect)


def swap(text: str, settings: RuleSettings, rng_seed: int, protect: str = r"\d") -> str:
    """``rate`` of the words (at least one) get two adjacent characters swapped."""
    return _nlpaug("swap", text, settings, rng_seed, protect)


def dropout(text: str, settings: RuleSettings, rng_seed: int, protect: str = r"\d") -> str:
    """``rate`` of the words of each line (at least one; never a line's only word) are deleted."""
    return _nlpaug("dropout", text, settings, rng_seed, protect)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(k for k, w in weights.items() if w > 0)
    return rng.choices(names, weights=[weights[k] for k in names])[0]


def casing(text: str, settings: CasingSettings, rng_seed: int, protect: str = "") -> str:
    """One style per call (lower, upper or capitalize, by weight), applied to each word with probability ``rate``."""
    if settings.rate == 0:
        return text
    rng = random.Random(rng_seed)
    style = _pick(rng, settings.styles)
    change = {"lower": str.lower, "upper": str.upper, "capitalize": lambda w: w[:1].upper() + w[1:]}[style]
    return _WORD.sub(lambda m: change(m.group()) if rng.random() < settings.rate else m.group(), text)


def punctuation(text: str, settings: PunctuationSettings, rng_seed: int, protect: str = "") -> str:
    """Each punctuation mark is, with probability ``rate``, dropped, repeated, spaced or swapped (by weight).

    A mark inside a number (``1.5``, ``1,000``) is never touched.
    """
    if settings.rate == 0:
        return text
    rng = random.Random(rng_seed)
    out = []
    for i, ch in enumerate(text):
        inside_number = ch in ".," and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        if ch not in MARKS or inside_number or rng.random() >= settings.rate:
            out.append(ch)
            continue
        op = _pick(rng, settings.ops)
        if op == "repeat":
            out.append(ch * rng.choice((2, 3)) if ch in "!?." else ch)
        elif op == "space":
            out.append(" " + ch if ch != "'" else ch)
        elif op == "swap":
            out.append({"?": rng.choice((".", "!", "?!")), ".": "!", "!": "."}.get(ch, ch))
        # drop: nothing
    return "".join(out)


PERTURBATIONS = {"typo": typo, "swap": swap, "dropout": dropout, "casing": casing, "punctuation": punctuation}
