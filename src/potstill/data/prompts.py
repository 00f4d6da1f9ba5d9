"""Load sources, drop empty, duplicate and too-long prompts, split, write JSONL (the prompts stage's work)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..io import write_json, write_jsonl
from ..models import load_tokenizer
from .config import PromptsConfig
from .dedup import dedup
from .length import PromptLimit, drop_too_long
from .load import SourceSpec, drop_empty, read_source, unique_id
from .split import SPLITS, make_splits


def section_limit(cfg: PromptsConfig) -> PromptLimit:
    """The length limit from the prompts section alone (``max_prompt_tokens``, counted by estimate);
    :func:`potstill.teachers.limits.prompt_limit` adds the teacher's context and tokenizer."""
    return PromptLimit(cfg.max_prompt_tokens, cfg.too_long)


def hashed_prompts_config(cfg: PromptsConfig, limit: PromptLimit | None = None) -> dict:
    """The settings the stage's output depends on (the prompts stage's config input): the length
    settings only when a limit applies, so a config without one keeps the hash it had before
    ``max_prompt_tokens`` / ``too_long`` existed."""
    out = cfg.model_dump(mode="json", exclude={"max_prompt_tokens", "too_long"}, exclude_defaults=True)
    return {**out, **(limit or section_limit(cfg)).inputs()}


def _load_group(
    specs: list[SourceSpec], cfg: PromptsConfig, base_dir: Path, owners: dict[str, str]
) -> tuple[list[dict], int]:
    """Load ``specs`` in order, checking ids are unique across every group; return records and #rows."""
    records = []
    for spec in specs:
        if spec.system_prompt is None and cfg.system_prompt is not None:
            spec = spec.model_copy(update={"system_prompt": cfg.system_prompt})
        recs, origins = read_source(spec, base_dir)
        if spec.train_only:
            for r in recs:
                r["train_only"] = True
        for r, (path, where, generated) in zip(recs, origins):
            if generated:
                r["id"] = unique_id(r["id"], owners)
            elif r["id"] in owners:
                raise UserError(
                    f"{where}: id {r['id']!r} already used at {owners[r['id']]}"
                    " (ids must be unique across all sources)",
                    path,
                )
            owners[r["id"]] = f"{path} {where}"
        records += recs
    return records, len(records)


def _clean(
    records: list[dict],
    cfg: PromptsConfig,
    dropped: dict[str, int],
    limit: PromptLimit,
    tokenizer,
    owners: dict[str, str],
) -> list[dict]:
    records, n_empty = drop_empty(records)
    dropped["empty"] += n_empty
    if cfg.dedup:
        records, counts = dedup(records, threshold=cfg.near_dup_threshold, seed=cfg.seed)
        for k, v in counts.items():
            dropped[k] += v
    records, n_long = drop_too_long(records, tokenizer, limit.max_tokens, limit.policy, owners, limit.why)
    dropped["too_long"] += n_long
    return records


def run_prompts(cfg: PromptsConfig, base_dir: Path, out_dir: Path, limit: PromptLimit | None = None) -> dict:
    """Run the prompts stage and write ``{train,validation,test,ood}.jsonl``, one ``NAME.jsonl`` per
    ``eval_sets`` entry, and ``stats.json``.

    Sources are read relative to ``base_dir``. ``limit``: the prompt length limit
    (:func:`potstill.teachers.limits.prompt_limit`; default :func:`section_limit`). Returns the
    stats written to ``stats.json``: ``{"loaded": n, "train": n, "validation": n, "test": n, "ood": n,
    "dropped": {...}}`` (and ``"eval_sets": {NAME: n}`` when there are any) where ``loaded`` equals
    the split and eval-set counts plus every ``dropped`` count (and ``"max_prompt_tokens"`` when a
    limit applied). Prints nothing.
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    limit = limit or section_limit(cfg)
    dropped = dict.fromkeys(
        ("empty", "exact_duplicate", "near_duplicate", "too_long", "contaminated", "over_max_prompts"), 0
    )
    owners: dict[str, str] = {}
    pool, loaded = _load_group(cfg.sources, cfg, base_dir, owners)
    test, n_test = _load_group(cfg.test, cfg, base_dir, owners)
    ood, n_ood = _load_group(cfg.ood, cfg, base_dir, owners)
    sets = {name: _load_group(specs, cfg, base_dir, owners) for name, specs in cfg.eval_sets.items()}
    tokenizer = None
    if limit.max_tokens is not None and limit.tokenizer:
        tokenizer = load_tokenizer(limit.tokenizer)
    pool = _clean(pool, cfg, dropped, limit, tokenizer, owners)
    where = ", ".join(str(base_dir / s.path) for s in cfg.sources)
    if not pool:
        n_dup = dropped["exact_duplicate"] + dropped["near_duplicate"]
        too_long = f", {dropped['too_long']} longer than {limit.describe()}" if dropped["too_long"] else ""
        raise UserError(
            f"no prompts left after dropping {dropped['empty']} empty and {n_dup} duplicate "
            f"prompts{too_long} (of {loaded} read)",
            where,
        )
    if cfg.max_prompts is not None and len(pool) > cfg.max_prompts:
        dropped["over_max_prompts"] = len(pool) - cfg.max_prompts
        pool = pool[: cfg.max_prompts]
    test = _clean(test, cfg, dropped, limit, tokenizer, owners) if cfg.test else None
    ood = _clean(ood, cfg, dropped, limit, tokenizer, owners)
    eval_sets = {name: _clean(records, cfg, dropped, limit, tokenizer, owners) for name, (records, _) in sets.items()}
    splits, dropped["contaminated"] = make_splits(
        pool, cfg.validation, cfg.test_fraction, cfg.seed, test_records=test, ood_records=ood, eval_sets=eval_sets
    )
    if not splits["train"]:
        raise UserError(
            f"all {len(pool)} prompts fell into validation/test; add prompts or lower validation/test_fraction", where
        )
    stats: dict = {"loaded": loaded + n_test + n_ood + sum(n for _, n in sets.values())}
    for name in SPLITS:
        stats[name] = write_jsonl(out_dir / f"{name}.jsonl", splits[name])
    if eval_sets:
        stats["eval_sets"] = {name: write_jsonl(out_dir / f"{name}.jsonl", splits[name]) for name in eval_sets}
    stats["dropped"] = dropped
    if limit.max_tokens is not None:
        stats["max_prompt_tokens"] = {
            "limit": limit.max_tokens,
            "policy": limit.policy,
            "why": limit.why,
            "counted_with": limit.tokenizer or "estimate",
        }
    write_json(out_dir / "stats.json", stats)
    return stats
