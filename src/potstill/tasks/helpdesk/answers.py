"""Gold answer text composed from KB facts. Used ONLY to train the reference teacher.

The student never sees these: it learns from the teacher's generations. Each (category,
attribute) has several sentence patterns, as a support team's answers have: the teacher is
trained on a random one per example, so where the answer could be phrased another way its
next-token distribution holds the alternatives (the "dark knowledge" soft labels carry), while
the facts themselves stay fixed. ``compose`` without a random generator uses the first pattern.
"""

from __future__ import annotations

import random

from .kb import Fact, KnowledgeBase

ANSWER_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("plans", "price"): (
        "The {entity} plan costs {value}.",
        "{entity} is {value}.",
        "It's {value} for the {entity} plan.",
        "You pay {value} on {entity}.",
    ),
    ("plans", "storage"): (
        "The {entity} plan includes {value} of storage.",
        "{entity} comes with {value} of storage.",
        "You get {value} of storage on {entity}.",
        "Storage on the {entity} plan is {value}.",
    ),
    ("plans", "seats"): (
        "The {entity} plan allows {value}.",
        "{entity} allows {value}.",
        "You can have {value} on the {entity} plan.",
        "On {entity} the limit is {value}.",
    ),
    ("plans", "support"): (
        "The {entity} plan comes with {value}.",
        "{entity} includes {value}.",
        "You get {value} on the {entity} plan.",
        "Support on {entity} is {value}.",
    ),
    ("plans", "history"): (
        "The {entity} plan keeps version history {value}.",
        "{entity} keeps version history {value}.",
        "Version history on the {entity} plan is kept {value}.",
        "On {entity}, history is kept {value}.",
    ),
    ("limits", "limit"): (
        "The {entity} is {value}.",
        "Our {entity} is {value}.",
        "It's {value}: that is the {entity}.",
        "You can go up to {value} ({entity}).",
    ),
    ("policies", "policy"): (
        "The {entity} is {value}.",
        "Our {entity} is {value}.",
        "Per our {entity}, it is {value}.",
        "In short, {value} ({entity}).",
    ),
    ("errors", "meaning"): (
        "Error {entity} means {value}.",
        "{entity} means {value}.",
        "That error ({entity}) means {value}.",
        "You see {entity} when {value}.",
    ),
    ("errors", "fix"): (
        "To fix error {entity}, {value}.",
        "To fix {entity}, {value}.",
        "For {entity}, {value}.",
        "If you get {entity}, {value}.",
    ),
    ("howto", "steps"): (
        "To {entity}, {value}.",
        "You can {entity} if you {value}.",
        "Just {value} to {entity}.",
        "First {value}; that is how to {entity}.",
    ),
}
FALLBACK = ("The {entity} {attribute} is {value}.",)


def phrasings(fact: Fact) -> list[str]:
    """Every sentence pattern of ``fact``'s kind, filled in (a generic one for a kind not listed)."""
    templates = ANSWER_TEMPLATES.get((fact.category, fact.attribute), FALLBACK)
    return [t.format(entity=fact.entity, attribute=fact.attribute, value=fact.value) for t in templates]


def sentence(fact: Fact, rng: random.Random | None = None) -> str:
    """One sentence stating ``fact``: the first pattern, or a random one when ``rng`` is given."""
    options = phrasings(fact)
    return rng.choice(options) if rng is not None else options[0]


def compose(kb: KnowledgeBase, fact_ids: list[str], rng: random.Random | None = None) -> str:
    """The gold answer to a query asking ``fact_ids``: their sentences, in order."""
    return " ".join(sentence(kb.by_id[i], rng) for i in fact_ids)
