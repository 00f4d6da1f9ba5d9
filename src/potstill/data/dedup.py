"""Exact and near-duplicate removal for prompt records (first occurrence wins)."""

from __future__ import annotations

import re
import unicodedata

from datasketch import MinHash, MinHashLSH

from .load import user_text

_WORD = re.compile(r"\w+")


def normalise(record: dict) -> str:
    """Normalised user content of a record: NFKC, lower-case, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", user_text(record))
    return " ".join(text.lower().split())


def _shingles(text: str, size: int) -> list[bytes]:
    words = _WORD.findall(text)
    if len(words) <= size:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)]


def dedup(
    records: list[dict], near: bool = True, threshold: float = 0.9, num_perm: int = 128, shingle: int = 3, seed: int = 0
) -> tuple[list[dict], dict[str, int]]:
    """Drop duplicate prompts, keeping the first one seen; deterministic for a given ``seed``.

    Exact duplicates share the same :func:`normalise` text. Near duplicates are found with
    MinHash LSH over ``shingle``-word shingles; a candidate counts only when its estimated
    Jaccard similarity to an already kept record is at least ``threshold``. The LSH index is
    banded for ``threshold - 0.2`` so that pairs just above ``threshold`` are not missed
    (banded at ``threshold`` itself it finds only ~30% of pairs at exactly ``threshold``).

    Returns ``(kept, {"exact_duplicate": n, "near_duplicate": m})``.
    """
    counts = {"exact_duplicate": 0, "near_duplicate": 0}
    seen: set[str] = set()
    unique: list[tuple[dict, str]] = []
    for r in records:
        key = normalise(r)
        if key in seen:
            counts["exact_duplicate"] += 1
            continue
        seen.add(key)
        unique.append((r, key))
    if not near or len(unique) < 2:
        return [r for r, _ in unique], counts

    base = MinHash(num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=max(threshold - 0.2, 0.3), num_perm=num_perm)
    sketches: dict[int, MinHash] = {}
    kept = []
    for i, (r, key) in enumerate(unique):
        mh = MinHash(num_perm=num_perm, seed=seed, permutations=base.permutations, scheme=base.scheme)
        mh.update_batch(_shingles(key, shingle))
        if any(mh.jaccard(sketches[j]) >= threshold for j in sorted(lsh.query(mh))):
            counts["near_duplicate"] += 1
            continue
        lsh.insert(i, mh)
        sketches[i] = mh
        kept.append(r)
    return kept, counts
