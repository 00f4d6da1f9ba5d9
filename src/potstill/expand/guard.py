"""Keep expansions out of evaluation: is a candidate training prompt a (near) copy of an evaluation prompt?

Uses the definitions of :mod:`potstill.evaluate.contamination` (normalised ``\\w+`` words, word
``n``-grams, near duplicate at ``NEAR_DUPLICATE`` overlap), in both directions:

* the candidate's n-grams are mostly found in evaluation prompts (it copies one); and
* an evaluation prompt's n-grams are mostly found in the candidate alone, which is what the eval
  stage's contamination check measures once the candidate is in train (a wrapped or composed
  message that contains a test prompt whole).
"""

from __future__ import annotations

from collections import Counter

from ..evaluate.contamination import NEAR_DUPLICATE, NGRAM, TrainIndex, prompt_words


class EvalGuard:
    """The evaluation prompts of every split, indexed for :meth:`match`."""

    def __init__(self, splits: dict[str, list[dict]], n: int = NGRAM, near: float = NEAR_DUPLICATE):
        self.n, self.near = n, near
        self.owners = [(split, str(r.get("id"))) for split, records in splits.items() for r in records]
        records = [r for rs in splits.values() for r in rs]
        # TrainIndex maps each gram to its first record's id: index positions stand in for the ids
        self.index = TrainIndex([{"id": str(i), "messages": r["messages"]} for i, r in enumerate(records)], n)
        self.grams: dict[int, dict[tuple, list[tuple[int, int]]]] = {}  # k -> gram -> [(eval idx, count)]
        self.sizes: list[int] = []
        for i, r in enumerate(records):
            w = prompt_words(r)
            k = min(n, len(w))
            counts = Counter(tuple(w[j : j + k]) for j in range(len(w) - k + 1)) if w else Counter()
            self.sizes.append(sum(counts.values()))
            table = self.grams.setdefault(k, {})
            for g, c in counts.items():
                table.setdefault(g, []).append((i, c))

    def match(self, record: dict) -> tuple[str, str] | None:
        """``(split, eval id)`` of an evaluation prompt that ``record`` copies, or None."""
        w = prompt_words(record)
        if not w:
            return None
        hit = self.index.exact.get(" ".join(w))
        if hit is None:
            overlap, first = self.index.overlap(w)
            hit = first if overlap >= self.near else None
        if hit is not None:
            return self.owners[int(hit)]
        for k, table in self.grams.items():
            if k == 0 or len(w) < k:
                continue
            found: Counter = Counter()
            for g in {tuple(w[j : j + k]) for j in range(len(w) - k + 1)}:
                for i, c in table.get(g, ()):
                    found[i] += c
            for i, c in sorted(found.items()):
                if c / self.sizes[i] >= self.near:
                    return self.owners[i]
        return None
