"""Load sources, drop empty and duplicate prompts, split, write JSONL (the prompts stage's work)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..io import write_json, write_jsonl
from .config import PromptsConfig
from .dedup import dedup
from .load import SourceSpec, drop_empty, read_source, unique_id
from .split import SPLITS, make_splits


def _load_group(specs: list[SourceSpec], cfg: PromptsConfig, base_dir: Path,
                owners: dict[str, str]) -> tuple[list[dict], int]:
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
                raise UserError(f"{where}: id {r['id']!r} already used at {owners[r['id']]}"
                                " (ids must be unique across all sources)", path)
            owners[r["id"]] = f"{path} {where}"
        records += recs
    return records, len(records)


def _clean(records: list[dict], cfg: PromptsConfig, dropped: dict[str, int]) -> list[dict]:
    records, n_empty = drop_empty(records)
    dropped["empty"] += n_empty
    if cfg.dedup:
        records, counts = dedup(records, threshold=cfg.near_dup_threshold, seed=cfg.seed)
        for k, v in counts.items():
            dropped[k] += v
    return records


def run_prompts(cfg: PromptsConfig, base_dir: Path, out_dir: Path) -> dict:
    """Run the prompts stage and write ``{train,validation,test,ood}.jsonl`` and ``stats.json``.

    Sources are read relative to ``base_dir``. Returns the stats written to ``stats.json``:
    ``{"loaded": n, "train": n, "validation": n, "test": n, "ood": n, "dropped": {...}}`` where
    ``loaded`` equals the split counts plus every ``dropped`` count. Prints nothing.
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    dropped = dict.fromkeys(("empty", "exact_duplicate", "near_duplicate", "contaminated", "over_max_prompts"), 0)
    owners: dict[str, str] = {}
    pool, loaded = _load_group(cfg.sources, cfg, base_dir, owners)
    test, n_test = _load_group(cfg.test, cfg, base_dir, owners)
    ood, n_ood = _load_group(cfg.ood, cfg, base_dir, owners)
    pool = _clean(pool, cfg, dropped)
    where = ", ".join(str(base_dir / s.path) for s in cfg.sources)
    if not pool:
        n_dup = dropped["exact_duplicate"] + dropped["near_duplicate"]
        raise UserError(f"no prompts left after dropping {dropped['empty']} empty and {n_dup} duplicate "
                        f"prompts (of {loaded} read)", where)
    if cfg.max_prompts is not None and len(pool) > cfg.max_prompts:
        dropped["over_max_prompts"] = len(pool) - cfg.max_prompts
        pool = pool[:cfg.max_prompts]
    test = _clean(test, cfg, dropped) if cfg.test else None
    ood = _clean(ood, cfg, dropped)
    splits, dropped["contaminated"] = make_splits(
        pool, cfg.validation, cfg.test_fraction, cfg.seed, test_records=test, ood_records=ood)
    if not splits["train"]:
        raise UserError(f"all {len(pool)} prompts fell into validation/test; add prompts or lower "
                        "validation/test_fraction", where)
    stats: dict = {"loaded": loaded + n_test + n_ood}
    for name in SPLITS:
        stats[name] = write_jsonl(out_dir / f"{name}.jsonl", splits[name])
    stats["dropped"] = dropped
    write_json(out_dir / "stats.json", stats)
    return stats
