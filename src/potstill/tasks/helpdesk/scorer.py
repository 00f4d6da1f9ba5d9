"""Grader for the helpdesk task: what fraction of the asked facts does an answer state correctly?

Use it from a potstill config as ``{type: python, function: "potstill.tasks.helpdesk.scorer:score"}``.

Rules, per asked fact (``record["facts"]`` or ``record["meta"]["facts"]``):

1. the fact is *stated* when every one of its ``required`` phrases occurs in the normalised
   answer (see ``kb.normalize``: case, punctuation, ``2GB``/``2 gb``, ``$14/mo``/``$14 per
   month``, plurals of units and small number words do not matter);
2. it is *contradicted* when the answer also states another fact of the same category and
   attribute about a different entity that was not asked (so listing every plan's price to be
   safe earns nothing for the price asked);
3. the fact counts when stated and not contradicted.

The score is the mean over the asked facts: a two-question record answered half right is 0.5.
Pure Python, no model, no reference needed (``reference`` is accepted and ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

from .kb import Fact, KnowledgeBase, load_kb, normalize

__all__ = ["score", "fact_verdicts", "load_kb", "asked_facts"]


def asked_facts(record: dict) -> list[str]:
    """The fact ids a record asks about, from ``facts`` or ``meta.facts`` (a list or a string)."""
    facts = record.get("facts")
    if facts is None:
        facts = (record.get("meta") or {}).get("facts")
    if facts is None:
        raise KeyError("record has no 'facts' (nor 'meta.facts')")
    if isinstance(facts, str):  # a JSON list, or ids separated by commas/spaces
        facts = json.loads(facts) if facts.lstrip().startswith("[") else facts.replace(",", " ").split()
    return list(facts)


def _verdict(fact: Fact, answer_norm: str, kb: KnowledgeBase, asked: set[str]) -> bool:
    if not fact.stated_in(answer_norm):
        return False
    return not any(g.id not in asked and g.entity != fact.entity and g.stated_in(answer_norm) for g in kb.group(fact))


def fact_verdicts(answer: str, record: dict, kb: KnowledgeBase | None = None) -> dict[str, bool]:
    """Per asked fact id: does the answer state it correctly (stated, not contradicted)?"""
    kb = kb or load_kb()
    ids = asked_facts(record)
    unknown = [i for i in ids if i not in kb.by_id]
    if unknown:
        raise KeyError(f"unknown fact ids {unknown}")
    answer_norm = normalize(answer or "")
    asked = set(ids)
    return {i: _verdict(kb.by_id[i], answer_norm, kb, asked) for i in ids}


def score(
    answer: str, record: dict, reference: str | None = None, kb: KnowledgeBase | str | Path | None = None
) -> float:
    """Fraction (0..1) of the record's asked facts that ``answer`` states correctly.

    ``kb`` may be a loaded ``KnowledgeBase`` or a path; by default the packaged ``kb.json``.
    A record asking no facts scores 0.0.
    """
    if kb is not None and not isinstance(kb, KnowledgeBase):
        kb = load_kb(kb)
    verdicts = fact_verdicts(answer, record, kb)
    return sum(verdicts.values()) / len(verdicts) if verdicts else 0.0
