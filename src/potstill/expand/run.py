"""The expand stage: grow the training prompts with perturbed, wrapped, composed and rewritten copies.

Between the prompts and generate stages. Every expansion is a training prompt only: the
evaluation splits are read only to drop expansions that copy one of their prompts
(:class:`potstill.expand.guard.EvalGuard`). Each method works on a record's last user message
(system messages are kept) and is deterministic in the seed, the method and the parent's id, so
turning one method on or off never changes what another makes.

Writes ``out_dir/train.jsonl`` (the original train records unchanged, then the kept expansions) and
``out_dir/stats.json``; the writer step also writes ``out_dir/writer/`` (see :mod:`.rewrites`).
An expansion record is ``{"id": "METHOD-HASH", "messages", "category", "meta": {"synthetic": true,
"method", "parents": [ids], ...}}`` with ``HASH`` taken from the method and the messages.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from ..data.dedup import dedup, normalise
from ..data.load import unique_id
from ..data.split import split_point
from ..io import sha256_json, write_json, write_jsonl
from .chat import compose, wrap
from .config import ExpandConfig
from .guard import EvalGuard
from .rewrites import run_writer
from .rules import PERTURBATIONS
from .writer import WriterRunner, seed_text

METHODS = (*PERTURBATIONS, "wrap", "compose", "paraphrase", "evolve")
SURFACE = {"casing", "punctuation"}  # changes that dedup's normalisation ignores: deduplicated on the raw text


def rng_seed(seed: int, method: str, *parts) -> int:
    """A 64-bit seed from the stage seed, a method and e.g. a parent id and a copy number."""
    return int(sha256_json([seed, method, *parts])[:16], 16)


def chosen(seed: int, method: str, record_id: str, share: float) -> bool:
    """Whether ``method`` expands the record ``record_id`` (a seeded hash, independent of other methods)."""
    return split_point(f"{method}\x00{record_id}", seed) < share


OWN_FIELDS = ("id", "messages", "category", "meta")  # what an expansion sets itself; other fields are inherited


def _merge(values: list) -> tuple[bool, object]:
    """One value for several parents' values of a field: lists joined (each item once), equal values kept."""
    if all(isinstance(v, list) for v in values):
        joined = []
        for v in values:
            joined.extend(x for x in v if x not in joined)
        return True, joined
    return all(v == values[0] for v in values), values[0]


def inherited(records: list[dict]) -> tuple[dict, dict, list[str]]:
    """The labels an expansion keeps from its parent ``records`` (what a scorer reads: e.g. ``reference``
    or ``meta.facts``): (top-level fields, meta fields, names that could not be merged).

    One parent's are kept as they are; several parents' (a composed message) are merged by
    :func:`_merge`, and a field whose values conflict (two different references, say) is left out
    and named, so that a split that needs scoring can drop the record.
    """
    if len(records) == 1:  # one parent: its labels as they are
        r = records[0]
        return {k: v for k, v in r.items() if k not in OWN_FIELDS}, dict(r.get("meta") or {}), []
    unmerged: list[str] = []

    def merge(dicts: list[dict], prefix: str) -> dict:
        out = {}
        for key in dict.fromkeys(k for d in dicts for k in d):
            ok, value = _merge([d.get(key) for d in dicts])
            if ok:
                out[key] = value
            else:
                unmerged.append(prefix + key)
        return out

    top = merge([{k: v for k, v in r.items() if k not in OWN_FIELDS} for r in records], "")
    meta = merge([dict(r.get("meta") or {}) for r in records], "meta.")
    return top, meta, unmerged


def expansion(
    parent: dict,
    text: str,
    method: str,
    parents: list[str],
    category: str | None,
    sources: list[dict] | None = None,
    **extra,
) -> dict:
    """A synthetic record: ``parent``'s messages with the last user message replaced by ``text``.

    It inherits the labels of ``sources`` (default: ``parent``; see :func:`inherited`) under its own
    id, category and provenance (``meta.synthetic``, ``method``, ``parents``, ``extra``; and
    ``meta.unmerged`` when some label could not be merged).
    """
    messages = [dict(m) for m in parent["messages"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = text
    rid = f"{method}-{sha256_json({'method': method, 'messages': messages})[:16]}"
    top, labels, unmerged = inherited(sources or [parent])
    meta = {**labels, "synthetic": True, "method": method, "parents": parents, **extra}
    if unmerged:
        meta["unmerged"] = unmerged
    return {**top, "id": rid, "messages": messages, "category": category, "meta": meta}


def _rules(cfg: ExpandConfig, train: list[dict], seed: int, unchanged: Counter) -> list[dict]:
    out = []
    for method, perturb in PERTURBATIONS.items():
        settings = getattr(cfg, method)
        if not settings.enabled:
            continue
        for r in train:
            text = seed_text(r)
            if text is None or not chosen(seed, method, r["id"], settings.share):
                continue
            for copy in range(settings.copies):
                new = perturb(text, settings, rng_seed(seed, method, r["id"], copy), cfg.protect)
                if new == text:
                    unchanged[method] += 1
                else:
                    out.append(expansion(r, new, method, [r["id"]], r.get("category")))
    return out


def _wraps(cfg: ExpandConfig, train: list[dict], seed: int) -> list[dict]:
    s = cfg.wrap
    if not s.enabled:
        return []
    return [
        expansion(r, wrap(seed_text(r), s, rng_seed(seed, "wrap", r["id"], copy)), "wrap", [r["id"]], r.get("category"))
        for r in train
        if seed_text(r) is not None and chosen(seed, "wrap", r["id"], s.share)
        for copy in range(s.copies)
    ]


def _composes(cfg: ExpandConfig, train: list[dict], seed: int) -> list[dict]:
    """Messages joining a chosen prompt and partners with the same system messages (and category, if asked)."""
    s = cfg.compose
    if not s.enabled:
        return []
    groups: dict[str, list[dict]] = {}
    for r in train:  # single-question chats only: a user message, after any system messages
        if [m["role"] for m in r["messages"] if m["role"] != "system"] == ["user"]:
            system = [m["content"] for m in r["messages"] if m["role"] == "system"]
            groups.setdefault(json.dumps([system, r.get("category") if s.same_category else None]), []).append(r)
    out = []
    for group in groups.values():
        for pos, r in enumerate(group):
            if not chosen(seed, "compose", r["id"], s.share):
                continue
            for copy in range(s.copies):
                rng = random.Random(rng_seed(seed, "compose", r["id"], copy))
                k = min(rng.randint(s.min_parts, s.max_parts), len(group))
                if k < 2:
                    continue
                picks = [i + (i >= pos) for i in rng.sample(range(len(group) - 1), k - 1)]
                parts = [r, *(group[i] for i in picks)]
                cats = {p.get("category") for p in parts}
                text = compose([seed_text(p) for p in parts], s, rng.getrandbits(64))
                out.append(
                    expansion(
                        r, text, "compose", [p["id"] for p in parts], cats.pop() if len(cats) == 1 else None, parts
                    )
                )
    return out


def rule_based(cfg: ExpandConfig, records: list[dict], seed: int, unchanged: Counter) -> list[dict]:
    """The rule-based, wrapped and composed expansions of ``records`` (composition joins ``records`` only);
    rule perturbations that change nothing are counted in ``unchanged``."""
    return [*_rules(cfg, records, seed, unchanged), *_wraps(cfg, records, seed), *_composes(cfg, records, seed)]


def keep_out_of_eval(candidates: list[dict], splits: dict[str, list[dict]]) -> tuple[list[dict], Counter, list]:
    """The candidates that copy no evaluation prompt, the count of the others by split, and a few examples."""
    guard, clean, contaminated, examples = EvalGuard(splits), [], Counter(), []
    for c in candidates:
        hit = guard.match(c)
        if hit is None:
            clean.append(c)
            continue
        contaminated[hit[0]] += 1
        if len(examples) < 5:
            examples.append({"id": c["id"], "split": hit[0], "eval_id": hit[1]})
    return clean, contaminated, examples


def dedup_expansions(
    originals: list[dict], candidates: list[dict], threshold: float, seed: int, dropped: Counter
) -> list[dict]:
    """Candidates that are not exact or near duplicates of an original or an earlier candidate (drops
    counted in ``dropped``).

    Casing and punctuation changes are compared on their exact messages (normalisation would call
    every one of them a duplicate of its parent); the others with :func:`potstill.data.dedup.dedup`.
    """
    wordy = [c for c in candidates if c["meta"]["method"] not in SURFACE]
    kept, _ = dedup([*originals, *wordy], threshold=threshold, seed=seed)
    keep = {id(c) for c in kept}
    seen = {normalise(r) for r in originals}  # dedup's exact test: the normalised text of any earlier record
    for c in wordy:
        key = normalise(c)
        if id(c) not in keep:
            dropped["exact_duplicate" if key in seen else "near_duplicate"] += 1
        seen.add(key)
    seen = {sha256_json(r["messages"]) for r in (*originals, *kept)}
    for c in candidates:
        if c["meta"]["method"] in SURFACE:
            key = sha256_json(c["messages"])
            if key in seen:
                dropped["exact_duplicate"] += 1
            else:
                seen.add(key)
                keep.add(id(c))
    return [c for c in candidates if id(c) in keep]


def give_unique_ids(records: list[dict], taken: set[str]) -> None:
    """Rename, in place, each record whose id is in ``taken`` (or given to an earlier record) with a suffix."""
    for r in records:
        r["id"] = unique_id(r["id"], taken)
        taken.add(r["id"])


def method_stats(made: Counter, kept: list[dict], unchanged: Counter) -> dict[str, dict]:
    """Per method that made or tried anything: expansions ``made``, ``kept`` and ``unchanged`` (never made)."""
    per_method = Counter(c["meta"]["method"] for c in kept)
    return {
        m: {"made": made[m], "kept": per_method[m], "unchanged": unchanged[m]}
        for m in METHODS
        if made[m] or unchanged[m]
    }


def run_expand(
    cfg: ExpandConfig,
    train_records: list[dict],
    eval_records_by_split: dict[str, list[dict]],
    out_dir: Path,
    work_dir: Path,
    seed: int = 0,
    writer_runner: WriterRunner | None = None,
    *,
    base_dir: str | Path = ".",
) -> dict:
    """Expand ``train_records``; write ``out_dir/train.jsonl`` and ``out_dir/stats.json``; return the stats.

    Runs every method whose ``enabled`` is set (``cfg.enabled`` is the pipeline's switch, not read
    here). ``eval_records_by_split`` (validation, test, ood and the eval sets) is only checked against.
    ``writer_runner`` answers the writer's instruction records (default: ``cfg.writer.model`` through
    ``run_generate``); ``base_dir`` resolves ``writer.model`` and ``writer.cache_file``. Stats:
    ``made`` (expansions made per method) = ``kept`` + every ``dropped`` count except ``unchanged``
    (rule perturbations that changed nothing, never made).
    """
    started = time.perf_counter()
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    seed = cfg.seed if cfg.seed is not None else seed
    dropped: Counter = Counter()
    unchanged: Counter = Counter()
    candidates = rule_based(cfg, train_records, seed, unchanged)
    writer_stats = None
    if cfg.writer.enabled:
        accepted, writer_stats = run_writer(cfg.writer, train_records, seed, out_dir, work_dir, writer_runner, base_dir)
        for r, ins, text, writer in accepted:
            extra = {"instruction": ins.name, "writer": (writer or {}).get("model")}
            candidates.append(expansion(r, text, ins.method, [r["id"]], r.get("category"), **extra))
    made = Counter(c["meta"]["method"] for c in candidates)

    clean, contaminated, examples = keep_out_of_eval(candidates, eval_records_by_split)
    dropped["contaminated"] = sum(contaminated.values())
    kept = dedup_expansions(train_records, clean, cfg.near_dup_threshold, seed, dropped)
    if cfg.max_total is not None and len(kept) > cfg.max_total:
        picks = set(random.Random(rng_seed(seed, "max_total")).sample(range(len(kept)), cfg.max_total))
        dropped["over_max_total"] = len(kept) - cfg.max_total
        kept = [c for i, c in enumerate(kept) if i in picks]
    give_unique_ids(kept, {r["id"] for r in train_records})

    n = write_jsonl(out_dir / "train.jsonl", [*train_records, *kept])
    stats = {
        "seeds": len(train_records),
        "expansions": len(kept),
        "train": n,
        "methods": method_stats(made, kept, unchanged),
        "dropped": {k: dropped[k] for k in ("exact_duplicate", "near_duplicate", "contaminated", "over_max_total")}
        | {"unchanged": sum(unchanged.values())},
        "contaminated": {"by_split": dict(sorted(contaminated.items())), "examples": examples},
        "writer": writer_stats,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / "stats.json", stats)
    return stats
