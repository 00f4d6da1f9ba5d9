"""Deterministic train/validation/test/OOD splits (and named eval sets) and the train-contamination guard."""

from __future__ import annotations

import hashlib

from .dedup import normalise

SPLITS = ("train", "validation", "test", "ood")


def split_point(record_id: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by ``seed`` and the id alone (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(record_id: str, validation: float = 0.1, test: float = 0.1, seed: int = 0) -> str:
    """Split name for one id: ``test`` below ``test``, then ``validation``, else ``train``."""
    u = split_point(record_id, seed)
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


def drop_contaminated(train: list[dict], others: list[dict]) -> tuple[list[dict], int]:
    """Remove from ``others`` every record whose normalised text equals a train record's."""
    train_texts = {normalise(r) for r in train}
    kept = [r for r in others if normalise(r) not in train_texts]
    return kept, len(others) - len(kept)


def make_splits(
    records: list[dict],
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    test_records: list[dict] | None = None,
    ood_records: list[dict] | None = None,
    eval_sets: dict[str, list[dict]] | None = None,
) -> tuple[dict[str, list[dict]], int]:
    """Split ``records`` by a seeded hash of their ids; keep source order within each split.

    Records marked ``train_only`` (from a ``train_only`` source) always go to train.
    ``test_records``, when given (even empty), replace the random test split and ``test`` is
    ignored. ``ood_records`` always form the OOD split and never reach train; so does each named
    set of ``eval_sets`` (``prompts.eval_sets``), as a split of its own name. Test, OOD and eval-set
    records whose normalised text equals a train record's are dropped.

    Returns ``({"train", "validation", "test", "ood", *eval_sets: records}, n_contaminated)``.
    """
    explicit_test = test_records is not None
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for r in records:
        split = (
            "train" if r.get("train_only") else assign_split(r["id"], validation, 0.0 if explicit_test else test, seed)
        )
        out[split].append(r)
    if explicit_test:
        out["test"] = list(test_records)
    out["test"], n_test = drop_contaminated(out["train"], out["test"])
    out["ood"], n_ood = drop_contaminated(out["train"], list(ood_records or []))
    n_sets = 0
    for name, rows in (eval_sets or {}).items():
        out[name], n = drop_contaminated(out["train"], list(rows))
        n_sets += n
    return out, n_test + n_ood + n_sets
