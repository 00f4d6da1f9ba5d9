"""Degeneration checks on generated answers: repetition and length against the teacher.

Words are ``\\w+`` runs of the lower-cased answer (tokenizer-independent, so a teacher and a
student with different tokenizers are compared on one scale).

* :func:`repetition_rate` - the share of an answer's word n-grams (default n = 3) that repeat an
  earlier n-gram of the same answer: ``1 - distinct / total``. 0 for an answer without repeats
  (or shorter than n words); it approaches 1 for a loop such as ``"the the the the ..."``.
* :func:`length_ratio` - mean answer length (words) of a model over the teacher's on the same
  prompts; far from 1 means rambling (> 1) or truncated/empty answers (< 1).
* :func:`degeneration_summary` - both, plus the share of answers that hit ``max_new_tokens``
  (``finish_reason == "length"``) and of empty answers.
* :func:`degeneration_warnings` - a warning per student and split whose repetition, empty or cut
  share is far above the teacher's (the thresholds below).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")
NGRAM = 3
# A student's answers on a split are flagged when a share is above its floor AND above TIMES_TEACHER
# times the teacher's share on the same prompts: (measure, floor, what it is).
WARN_ABOVE = (
    ("repetition", 0.2, "repeated word 3-grams"),
    ("empty_rate", 0.05, "empty answers"),
    ("finish_length_rate", 0.1, "answers cut at max_new_tokens"),
)
TIMES_TEACHER = 2.0


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def repetition_rate(text: str, n: int = NGRAM) -> float:
    """Share of the word n-grams of ``text`` that already occurred earlier in it."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def length_ratio(texts: Sequence[str], teacher_texts: Sequence[str]) -> float | None:
    """Mean word count of ``texts`` over the mean word count of ``teacher_texts`` (None if the teacher's is 0)."""
    if not texts or len(texts) != len(teacher_texts):
        return None
    ours = sum(len(words(t)) for t in texts)
    theirs = sum(len(words(t)) for t in teacher_texts)
    return ours / theirs if theirs else None


def degeneration_summary(rows: Sequence[dict], teacher_rows: Sequence[dict], n: int = NGRAM) -> dict:
    """``{"repetition", "length_ratio", "mean_words", "finish_length_rate", "empty_rate"}`` for one model's answers.

    ``rows`` and ``teacher_rows`` are answer rows (``{"text", "finish_reason", ...}``) in prompt order.
    """
    texts = [r.get("text") or "" for r in rows]
    if not texts:
        return {
            "repetition": None,
            "length_ratio": None,
            "mean_words": None,
            "finish_length_rate": None,
            "empty_rate": None,
        }
    reps = [repetition_rate(t, n) for t in texts]
    return {
        "repetition": round(sum(reps) / len(reps), 6),
        "length_ratio": _round(length_ratio(texts, [r.get("text") or "" for r in teacher_rows])),
        "mean_words": round(sum(len(words(t)) for t in texts) / len(texts), 3),
        "finish_length_rate": round(sum(r.get("finish_reason") == "length" for r in rows) / len(rows), 6),
        "empty_rate": round(sum(not t.strip() for t in texts) / len(texts), 6),
    }


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def degeneration_warnings(splits: dict[str, dict[str, dict]], roles: dict[str, str]) -> list[dict]:
    """Warnings for degenerate student answers: ``splits`` is ``{split: {model: measures}}`` (the measures of
    :func:`degeneration_summary`), ``roles`` ``{model: "teacher" | "student" | "floor"}``.

    One warning per student and split where some measure of :data:`WARN_ABOVE` is above its floor and
    above :data:`TIMES_TEACHER` x the teacher's (the floor alone when the teacher's is unknown).
    """
    teacher = next((n for n, r in roles.items() if r == "teacher"), None)
    out = []
    for split, by_model in splits.items():
        ref = by_model.get(teacher) or {}
        for name in (n for n, r in roles.items() if r == "student" and by_model.get(n)):
            flagged, parts = {}, []
            for key, floor, what in WARN_ABOVE:
                x, t = by_model[name].get(key), ref.get(key) if _num(ref.get(key)) else None
                if not _num(x) or x <= floor or (t is not None and x <= TIMES_TEACHER * t):
                    continue
                flagged[key] = {"model": x, "teacher": t}
                parts.append(f"{100 * x:.0f}% {what}" + (f" (teacher {100 * t:.0f}%)" if t is not None else ""))
            if flagged:
                out.append(
                    {
                        "kind": "degeneration",
                        "model": name,
                        "split": split,
                        "measures": flagged,
                        "message": f"{name} on {split}: degenerate answers: {', '.join(parts)}; read its "
                        "answers before trusting its scores",
                    }
                )
    return out
