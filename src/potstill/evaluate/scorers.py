"""Pluggable quality scorers: ``scorer(answer, record, reference) -> float in [0, 1]``.

``record`` is the prompt record (its ``meta`` holds the source's extra columns); ``reference``
is the teacher's answer to the same prompt when there is one. Kinds:

- ``exact``: answer equals the reference field (or the teacher's answer) exactly, after strip.
- ``normalized``: equal after lower-casing, removing punctuation and collapsing whitespace.
- ``regex``: ``pattern`` (``{field}`` placeholders filled from the record) is found in the answer.
- ``python``: ``module:function`` called as ``function(answer, record, reference)``.
- ``rouge_l``: ROUGE-L F1 (rouge-score) against the reference field or the teacher's answer.
- ``chrf``: chrF (sacrebleu's ``CHRF``, character n-grams up to 6, beta 2) / 100 against the reference
  field or the teacher's answer.
- ``agreement``: agreement with the teacher: 1 when the answer equals the teacher's answer after
  normalisation (as ``normalized``), else 0; the record's fields are not used.
"""

from __future__ import annotations

import importlib
import re
import string
from collections.abc import Callable

from ..config import ScorerSpec
from ..errors import UserError

Scorer = Callable[[str, dict, "str | None"], float]
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def record_field(record: dict, field: str):
    if field in record:
        return record[field]
    return (record.get("meta") or {}).get(field)


def _target(record: dict, field: str, reference: str | None) -> str | None:
    value = record_field(record, field)
    return str(value) if value is not None else reference


def _rouge() -> Callable[[str, str], float]:
    from rouge_score import rouge_scorer  # defers rouge_score

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return lambda pred, ref: scorer.score(ref, pred)["rougeL"].fmeasure


def _chrf() -> Callable[[str, str], float]:
    from sacrebleu.metrics import CHRF  # defers sacrebleu

    metric = CHRF()
    return lambda pred, ref: metric.sentence_score(pred, [ref]).score / 100.0


def load_function(spec: str) -> Callable:
    """Import ``module:function``; a bad spec is a one-line user error."""
    if ":" not in spec:
        raise UserError(f"scorer function '{spec}' must be 'module:function'")
    mod_name, attr = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"cannot import scorer module '{mod_name}' ({e})") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UserError(f"scorer function '{attr}' not found in module '{mod_name}'")
    return fn


def build_scorer(spec: ScorerSpec) -> Scorer:
    """The scorer a spec describes."""
    kind = spec.type
    if kind == "python":
        fn = load_function(spec.function)

        def python(answer, record, reference=None):
            try:
                return float(fn(answer, record, reference))
            except Exception as e:  # the user's own code: one line naming it and the record, not a traceback
                rid = record.get("id") if isinstance(record, dict) else None
                raise UserError(
                    f"scorer function '{spec.function}' failed on record {rid!r}: {type(e).__name__}: {e}"
                ) from None

        return python
    if kind in ("rouge_l", "chrf"):
        metric = _rouge() if kind == "rouge_l" else _chrf()

        def against_reference(answer, record, reference=None):
            target = _target(record, spec.field, reference)
            return metric(answer, target) if target else 0.0

        return against_reference
    if kind == "agreement":

        def agreement(answer, record, reference=None):
            return float(reference is not None and normalize(answer) == normalize(reference))

        return agreement
    if kind == "regex":

        def regex(answer, record, reference=None):
            fields = {**(record.get("meta") or {}), **record}
            try:
                pattern = spec.pattern.format(**{k: re.escape(str(v)) for k, v in fields.items()})
            except (KeyError, IndexError):
                pattern = spec.pattern
            return float(re.search(pattern, answer, flags=re.IGNORECASE) is not None)

        return regex
    norm = normalize if kind == "normalized" else str.strip

    def match(answer, record, reference=None):
        target = _target(record, spec.field, reference)
        return float(target is not None and norm(answer) == norm(target))

    return match


def scorer_name(spec: ScorerSpec) -> str:
    if spec.name:
        return spec.name
    if spec.type == "python":
        return spec.function.split(":")[-1]
    return spec.type
