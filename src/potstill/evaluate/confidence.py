"""How much "dark knowledge" the teacher's answers carry: its confidence per answer token.

From the top-k log-probabilities the generate stage records (``teacher.top_logprobs``): the share of
answer tokens whose top-1 probability exceeds 0.99, the mean top-1 probability, and the mean
entropy over the recorded top-k (a lower bound of the full entropy, since the tail beyond k is left
out), with the mass below the top-1 token. A teacher that puts nearly all its mass on one token
everywhere gives soft labels that say little more than its text: KD then has nothing to add over SFT
(raise ``train.kd.temperature``, or distil a less over-confident teacher).
:func:`confidence_by_origin` splits the figures by where each training prompt came from (the
original prompts, or each expand method): the teacher is usually surest on the prompts it was
trained on and least sure on rewritten ones, which is where its soft labels carry information.
"""

from __future__ import annotations

import math

CONFIDENT = 0.99  # a token whose top-1 probability exceeds this carries (almost) no dark knowledge
UNSURE = 0.9  # a token whose top-1 probability is below this carries a real alternative
WARN_SHARE = 0.9  # warn when more than this share of answer tokens are that confident


def teacher_confidence(generations: list[dict]) -> dict | None:
    """Confidence figures over every answer token with recorded top-k log-probs; None when none are recorded."""
    top1, entropy = [], []
    for row in generations:
        for position in row.get("top_logprobs") or []:
            probs = [math.exp(lp) for _, lp in position]
            if probs:
                top1.append(max(probs))
                entropy.append(-sum(p * math.log(p) for p in probs if p > 0))
    if not top1:
        return None
    k = max(len(r["top_logprobs"][0]) for r in generations if r.get("top_logprobs"))
    return {
        "tokens": len(top1),
        "top_k": k,
        "share_top1_over_0_99": round(sum(p > CONFIDENT for p in top1) / len(top1), 6),
        "share_top1_under_0_9": round(sum(p < UNSURE for p in top1) / len(top1), 6),
        "mean_top1_prob": round(sum(top1) / len(top1), 6),
        "mean_mass_below_top1": round(1 - sum(top1) / len(top1), 6),
        "mean_topk_entropy_nats": round(sum(entropy) / len(entropy), 6),
    }


def confidence_by_origin(generations: list[dict], origin: dict[str, str]) -> dict[str, dict]:
    """:func:`teacher_confidence` per origin of the prompt (``origin``: id -> e.g. an expand method; ids
    not in it count as ``original``), origins with recorded top-k only, in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in generations:
        groups.setdefault(origin.get(row.get("id"), "original"), []).append(row)
    out = {name: teacher_confidence(rows) for name, rows in groups.items()}
    return {name: conf for name, conf in out.items() if conf}


def prompt_origins(train: list[dict]) -> dict[str, str]:
    """id -> how a synthetic training prompt was made (its ``meta.method``); original prompts are left out."""
    return {r["id"]: r["meta"]["method"] for r in train if (r.get("meta") or {}).get("synthetic")}


def confidence_warning(conf: dict | None, kd_temperature: float) -> dict | None:
    """A report warning when the teacher is over-confident on most answer tokens (at the KD temperature 1)."""
    if not conf or conf["share_top1_over_0_99"] <= WARN_SHARE:
        return None
    return {
        "kind": "teacher_confidence",
        "model": "teacher",
        **conf,
        "message": f"teacher: its top-1 probability exceeds {CONFIDENT} on {100 * conf['share_top1_over_0_99']:.1f}% "
        f"of {conf['tokens']} answer tokens (mean entropy over its top-{conf['top_k']}: "
        f"{conf['mean_topk_entropy_nats']:.3f} nats): its soft labels carry little beyond its text, so KD has little "
        f"to add over SFT at train.kd.temperature {kd_temperature:g}; a higher temperature exposes the ranks below "
        "the top token",
    }
