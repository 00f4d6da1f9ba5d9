"""The expand stage's built-in phrase lists share no phrase with the helpdesk OOD generator.

The demo's OOD split is made with its own chit-chat and joiners (``tasks.helpdesk.queries``, the
``test`` side). A built-in wrapper, sign-off or joiner equal to one of them would teach the students
the test's own phrasing: expansion would then score on OOD for the wrong reason.
"""

import re

from potstill.expand import phrases
from potstill.tasks.helpdesk import queries

KINDS = ("GREETINGS", "CONTEXTS", "POLITENESS", "SIGNOFFS", "JOINERS", "INTROS")
LISTS = (*KINDS, *(f"VALIDATION_{k}" for k in KINDS))  # training lists and the held-out validation lists


def pieces(text: str) -> set[str]:
    """The phrase and each of its sentences, lower-cased, punctuation dropped."""
    parts = [text, *re.split(r"[.!?;:\n]+", text)]
    out = {" ".join(re.sub(r"[^\w' ]+", " ", p.lower()).split()) for p in parts}
    return out - {""}


def ood_phrases() -> set[str]:
    prefixes, suffixes = queries.CHITCHAT[queries.TEST]
    return set().union(*(pieces(p) for p in [*prefixes, *suffixes, *queries.JOINERS[queries.TEST]]))


def test_ood_phrase_set_is_read():
    ood = ood_phrases()
    assert "oh and" in ood and "hi there" in ood  # the generator's own joiner and greeting


def test_no_builtin_phrase_is_an_ood_phrase():
    ood = ood_phrases()
    shared = {(name, phrase) for name in LISTS for phrase in getattr(phrases, name) if pieces(phrase) & ood}
    assert not shared, f"built-in phrases that the OOD generator uses: {sorted(shared)}"


def test_pieces_normalises_punctuation_and_case():
    assert pieces(" Oh, and ") == {"oh and"}
    assert pieces("Hi there! Hope all is well.") == {"hi there hope all is well", "hi there", "hope all is well"}
