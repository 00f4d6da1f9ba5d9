"""Conversational expansions: wrap one message in chat phrasing, or compose several into one message.

Both are deterministic in ``rng_seed`` and draw only from the configured phrase lists.
"""

from __future__ import annotations

import random

from .config import ComposeSettings, WrapSettings


def continues(lead: str) -> bool:
    """True when text after ``lead`` continues its sentence (it ends in a comma, colon or a word)."""
    tail = lead.rstrip()
    return bool(tail) and (tail[-1] in ",:" or tail[-1].isalnum())


def lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased, unless its first word is 'I', an acronym or a code."""
    stripped = text.lstrip()
    word = stripped.split(maxsplit=1)[0] if stripped else ""
    core = word.rstrip(",.!?;:")
    if (
        not core
        or not core[0].isupper()
        or core == "I"
        or core.startswith("I'")
        or any(c.isupper() or c.isdigit() for c in core[1:])
    ):
        return text
    i = len(text) - len(stripped)
    return text[:i] + stripped[0].lower() + stripped[1:]


def _glue(parts: list[str], rng: random.Random, newline_rate: float) -> str:
    """Parts joined by spaces (or line breaks); after a comma the next part goes on in lower case."""
    sep = "\n" if rng.random() < newline_rate else " "
    out: list[str] = []
    for p in (p.strip() for p in parts if p.strip()):
        out.append(lower_first(p) if out and sep == " " and out[-1].endswith(",") else p)
    return sep.join(out)


def wrap(text: str, settings: WrapSettings, rng_seed: int) -> str:
    """``text`` with a greeting, a context sentence, a polite lead-in and/or a sign-off (at least one)."""
    rng = random.Random(rng_seed)
    want = {
        part: rng.random() < rate
        for part, rate in (
            ("greeting", settings.greeting_rate),
            ("context", settings.context_rate),
            ("politeness", settings.politeness_rate),
            ("signoff", settings.signoff_rate),
        )
    }
    if not any(want.values()):
        want[rng.choice(sorted(want))] = True
    before, body = [], text.strip()
    if want["greeting"]:
        before.append(rng.choice(settings.greetings))
    if want["context"]:
        before.append(rng.choice(settings.contexts))
    if want["politeness"]:
        lead = rng.choice(settings.politeness)
        body = f"{lead.strip()} {lower_first(body) if continues(lead) else body}"
    after = [rng.choice(settings.signoffs)] if want["signoff"] else []
    return _glue([*before, body, *after], rng, settings.newline_rate)


def compose(texts: list[str], settings: ComposeSettings, rng_seed: int) -> str:
    """One message asking every text in ``texts``: joined by joiners, or as a numbered list; maybe an opener."""
    rng = random.Random(rng_seed)
    texts = [t.strip() for t in texts]
    intro = rng.choice(settings.intros) if rng.random() < settings.intro_rate else None
    if rng.random() < settings.numbered_rate:
        body = "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
        return f"{intro.strip()}\n{body}" if intro else body
    joiners = rng.sample(settings.joiners, len(settings.joiners))  # no joiner twice while others are left
    out = texts[0]
    for i, t in enumerate(texts[1:]):
        joiner = joiners[i % len(joiners)]
        glue = ("" if joiner[:1].isspace() else " ") + joiner
        glue += "" if glue[-1:].isspace() else " "
        out = out.rstrip() + glue + (lower_first(t) if continues(joiner) else t)
    return f"{intro.strip()} {out}" if intro else out
