"""The expanded validation split: perturbed, wrapped and composed copies of the validation prompts.

On template-like data the plain ``validation`` split (a random share of the training sources) is
answered about as well by every student as by the teacher, so it cannot choose between settings.
``validation_expanded`` asks the same questions the way the expand stage rewrites training prompts
(the same rules, wrappers and composition at the same rates, no writer model), but wraps and joins
them with held-out phrase lists (``expand.validation_phrases``, which share no phrase with the
training lists): a held-out measure of robustness to chat phrasing the students never saw, which
eval and ``potstill tune`` can use. With the training lists, validation rewarded students for
knowing the training wrappers by heart, which no real user's message rewards.

Only the copies are written (the originals are ``validation``), drawn with a seed that mixes in
``"validation"`` so they are other draws than the training expansions'; composition joins validation
prompts with validation prompts only. A copy is dropped when it copies a test, OOD or eval-set prompt
(:class:`.guard.EvalGuard`), when its normalised text is a training prompt's or a training
expansion's, or when it is an exact or near duplicate of one of those, of a validation prompt or of
an earlier copy (:func:`.run.dedup_expansions`). Every copy carries its parents' labels (what the
scorer reads, e.g. ``reference`` or ``meta.facts``; :func:`.run.inherited`); a composed copy whose
parents' labels conflict (two different references) cannot be scored and is dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..data.config import EXPANDED_VALIDATION
from ..data.split import drop_contaminated
from ..io import write_json, write_jsonl
from .config import ExpandConfig
from .run import dedup_expansions, give_unique_ids, keep_out_of_eval, method_stats, rng_seed, rule_based


def validation_seed(seed: int) -> int:
    """The seed of the validation copies: another stream than the training expansions' ``seed``."""
    return rng_seed(seed, "validation")


def run_expand_validation(
    cfg: ExpandConfig,
    validation: list[dict],
    training: list[dict],
    eval_records_by_split: dict[str, list[dict]],
    out_dir: Path,
    seed: int = 0,
) -> dict:
    """Expand ``validation``; write ``out_dir/validation_expanded.jsonl`` and ``out_dir/stats.json``; return the stats.

    ``training`` is every training prompt (with the training expansions, when they ran) and
    ``eval_records_by_split`` the other held-out splits (test, ood, eval sets): both only checked
    against. Every rule, wrap and compose setting applies as for training, with
    ``cfg.validation_phrases`` in place of the phrase lists (``cfg.enabled``, ``max_total`` and the
    writer do not apply). Stats as :func:`.run.run_expand`'s, plus ``dropped``
    per method and ``dropped.copies_training`` (normalised text equal to a training prompt's).
    """
    started = time.perf_counter()
    seed = cfg.seed if cfg.seed is not None else seed
    unchanged: Counter = Counter()
    wrap, compose = cfg.validation_phrases.applied(cfg.wrap, cfg.compose)
    held_out = cfg.model_copy(update={"wrap": wrap, "compose": compose})
    candidates = rule_based(held_out, validation, validation_seed(seed), unchanged)
    made = Counter(c["meta"]["method"] for c in candidates)

    labelled = [c for c in candidates if not c["meta"].get("unmerged")]
    dropped = Counter(unmerged_labels=len(candidates) - len(labelled))
    clean, contaminated, examples = keep_out_of_eval(labelled, eval_records_by_split)
    dropped["contaminated"] = sum(contaminated.values())
    clean, dropped["copies_training"] = drop_contaminated(training, clean)
    kept = dedup_expansions([*training, *validation], clean, cfg.near_dup_threshold, seed, dropped)
    give_unique_ids(kept, {r["id"] for r in validation})

    n = write_jsonl(Path(out_dir) / f"{EXPANDED_VALIDATION}.jsonl", kept)
    methods = method_stats(made, kept, unchanged)
    for counts in methods.values():
        counts["dropped"] = counts["made"] - counts["kept"]
    stats = {
        "split": EXPANDED_VALIDATION,
        "seeds": len(validation),
        "expansions": n,
        "methods": methods,
        "dropped": {
            k: dropped[k]
            for k in ("copies_training", "exact_duplicate", "near_duplicate", "contaminated", "unmerged_labels")
        }
        | {"unchanged": sum(unchanged.values())},
        "contaminated": {"by_split": dict(sorted(contaminated.items())), "examples": examples},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(Path(out_dir) / "stats.json", stats)
    return stats
