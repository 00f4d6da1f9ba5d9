"""Gold answer text composed from KB facts. Used ONLY to train the reference teacher.

The student never sees these: it learns from the teacher's generations. One fixed sentence
pattern per (category, attribute) keeps the teacher's answers short, factual and consistent.
"""

from __future__ import annotations

from .kb import Fact, KnowledgeBase

ANSWER_TEMPLATES: dict[tuple[str, str], str] = {
    ("plans", "price"): "The {entity} plan costs {value}.",
    ("plans", "storage"): "The {entity} plan includes {value} of storage.",
    ("plans", "seats"): "The {entity} plan allows {value}.",
    ("plans", "support"): "The {entity} plan comes with {value}.",
    ("plans", "history"): "The {entity} plan keeps version history {value}.",
    ("limits", "limit"): "The {entity} is {value}.",
    ("policies", "policy"): "The {entity} is {value}.",
    ("errors", "meaning"): "Error {entity} means {value}.",
    ("errors", "fix"): "To fix error {entity}, {value}.",
    ("howto", "steps"): "To {entity}, {value}.",
}
FALLBACK = "The {entity} {attribute} is {value}."


def sentence(fact: Fact) -> str:
    """One sentence stating ``fact`` (a generic pattern for (category, attribute) not listed)."""
    template = ANSWER_TEMPLATES.get((fact.category, fact.attribute), FALLBACK)
    return template.format(entity=fact.entity, attribute=fact.attribute, value=fact.value)


def compose(kb: KnowledgeBase, fact_ids: list[str]) -> str:
    """The gold answer to a query asking ``fact_ids``: their sentences, in order."""
    return " ".join(sentence(kb.by_id[i]) for i in fact_ids)
