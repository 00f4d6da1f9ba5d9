"""Contamination check: are evaluation prompts (near) copies of training prompts?

Prompts are compared on their user turns, normalised as the prompts stage does
(:func:`potstill.data.dedup.normalise`: NFKC, lower case, whitespace collapsed) and split into
``\\w+`` words.

* **exact**: the word sequence equals a training prompt's (case, whitespace and punctuation
  ignored). The prompts stage already drops test/OOD prompts whose normalised text (punctuation
  kept) equals a training prompt's, so what remains here are copies such as "How to fix E502"
  vs "How to fix E502?".
* **n-gram overlap**: the share of the prompt's word n-grams (``n = NGRAM = 8``) that occur in
  some training prompt. A prompt shorter than ``n`` words is compared as one k-gram of its own
  length k: overlap 1 when its whole word sequence occurs inside a training prompt, else 0.
* **near duplicate**: overlap >= ``NEAR_DUPLICATE`` (0.8).

A prompt is *contaminated* when it is an exact or near duplicate. :func:`check_contamination`
refuses (``UserError``) when a split's contaminated share exceeds the threshold, unless forced.
Memory: one set of training n-grams per n-gram size needed (``n``, and each shorter prompt length).
"""

from __future__ import annotations

import re

from ..data.config import EXPANDED_VALIDATION
from ..data.dedup import normalise
from ..errors import UserError

NGRAM = 8
NEAR_DUPLICATE = 0.8
EXAMPLES = 5
_WORD = re.compile(r"\w+")


def prompt_words(record: dict) -> list[str]:
    """The normalised user text of a prompt record as words (``prompt`` when there are no messages)."""
    if "messages" not in record:
        record = {"messages": [{"role": "user", "content": str(record.get("prompt", ""))}]}
    return _WORD.findall(normalise(record))


class TrainIndex:
    """Exact texts and k-gram sets of the training prompts, each k-gram mapped to its first training id."""

    def __init__(self, train: list[dict], n: int = NGRAM):
        self.n = n
        self.words = [(str(r.get("id")), prompt_words(r)) for r in train]
        self.exact = {}
        for rid, w in self.words:
            self.exact.setdefault(" ".join(w), rid)
        self._grams: dict[int, dict[tuple, str]] = {}

    def grams(self, k: int) -> dict[tuple, str]:
        if k not in self._grams:
            table: dict[tuple, str] = {}
            for rid, w in self.words:
                for i in range(len(w) - k + 1):
                    table.setdefault(tuple(w[i : i + k]), rid)
            self._grams[k] = table
        return self._grams[k]

    def overlap(self, w: list[str]) -> tuple[float, str | None]:
        """(share of the word n-grams of ``w`` found in training, the training id of the first match)."""
        if not w:
            return 0.0, None
        k = min(self.n, len(w))
        table = self.grams(k)
        grams = [tuple(w[i : i + k]) for i in range(len(w) - k + 1)]
        hits = [table[g] for g in grams if g in table]
        return len(hits) / len(grams), (hits[0] if hits else None)


def contamination_report(
    splits: dict[str, list[dict]], train: list[dict], n: int = NGRAM, near: float = NEAR_DUPLICATE
) -> dict:
    """Per evaluation split: exact and n-gram overlap with ``train``.

    Returns ``{"ngram": n, "near_duplicate": near, "train_prompts": int, "splits": {SPLIT: {"n",
    "exact", "near_duplicates", "contaminated", "contaminated_rate", "mean_ngram_overlap",
    "max_ngram_overlap", "examples": [{"id", "train_id", "overlap", "exact"}]}}}``; ``contaminated``
    counts prompts that are exact or near duplicates (each counted once).
    """
    index = TrainIndex(train, n)
    out = {"ngram": n, "near_duplicate": near, "train_prompts": len(train), "splits": {}}
    for split, records in splits.items():
        exact = near_dups = contaminated = 0
        overlaps, examples = [], []
        for r in records:
            w = prompt_words(r)
            exact_id = index.exact.get(" ".join(w)) if w else None
            ov, train_id = index.overlap(w)
            if exact_id is not None:
                ov, train_id = 1.0, exact_id
            overlaps.append(ov)
            is_exact, is_near = exact_id is not None, ov >= near
            exact += is_exact
            near_dups += is_near and not is_exact
            if is_exact or is_near:
                contaminated += 1
                if len(examples) < EXAMPLES:
                    examples.append(
                        {"id": r.get("id"), "train_id": train_id, "overlap": round(ov, 4), "exact": is_exact}
                    )
        m = len(records)
        out["splits"][split] = {
            "n": m,
            "exact": exact,
            "near_duplicates": near_dups,
            "contaminated": contaminated,
            "contaminated_rate": round(contaminated / m, 6) if m else 0.0,
            "mean_ngram_overlap": round(sum(overlaps) / m, 6) if m else 0.0,
            "max_ngram_overlap": round(max(overlaps), 6) if overlaps else 0.0,
            "examples": examples,
        }
    return out


# Splits that are a random share of the training sources themselves (made by the prompts stage), or
# copies of one (validation_expanded, made by the expand stage from validation): their near copies of
# training prompts measure the sources' own redundancy, not a mistake in the splits, so they are
# reported but never refused (model selection on them stays possible).
DRAWN_FROM_TRAIN = frozenset({"validation", EXPANDED_VALIDATION})


def check_contamination(report: dict, threshold: float, force: bool = False) -> list[str]:
    """Refuse (``UserError``) when a held-out split's contaminated share exceeds ``threshold``, unless ``force``.

    Returns warning lines (one per split over the threshold when forced or drawn from the training
    sources, :data:`DRAWN_FROM_TRAIN`, or with any contamination at all below it) and records
    ``threshold``, ``forced`` and ``refused`` in ``report``.
    """
    report["threshold"], report["forced"] = threshold, bool(force)
    over, notes = [], []
    for split, s in report["splits"].items():
        if not s["contaminated"]:
            continue
        line = (
            f"{split}: {s['contaminated']} of {s['n']} evaluation prompts ({100 * s['contaminated_rate']:.1f}%) "
            f"are exact ({s['exact']}) or near ({s['near_duplicates']}, >= {report['near_duplicate']:.0%} of "
            f"{report['ngram']}-grams) copies of training prompts"
        )
        (over if s["contaminated_rate"] > threshold else notes).append(line)
    drawn = [line for line in over if line.split(":")[0] in DRAWN_FROM_TRAIN]
    over = [line for line in over if line not in drawn]
    if over and not force:
        report["refused"] = True
        first = report["splits"][over[0].split(":")[0]]["examples"][0]
        raise UserError(
            f"contaminated evaluation: {over[0]} (over eval.contamination_threshold={threshold}; "
            f"e.g. {first['id']} ~ training {first['train_id']}); fix the splits or set "
            "eval.force_contaminated=true"
        )
    report["refused"] = False
    drawn = [
        line + " (over the threshold; a random share of the training sources: warned, not refused)" for line in drawn
    ]
    return [line + (" (over the threshold; forced)" if line in over else "") for line in over + notes] + drawn
