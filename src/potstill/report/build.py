"""Assemble the final report from the eval, measure, cost and training stages, and write it.

``report.json`` schema (every key below is always present; values may be null when a stage
produced nothing for that model)::

    {
      "schema_version": 1,
      "name": str, "teacher": str, "student": str,     # from the config summary
      "machine": str,                                  # where speed/memory were measured
      "scorer": str | null,                            # the task's primary scorer
      "queries_per_day": int | null, "prices": {...},
      "primary_split": str | null,                     # "test" when present
      "summary": str,                                  # the one-paragraph headline
      "best_student": str | null,                      # highest score on selection_split (ties: primary split)
      "selection_split": str | null,                   # validation_expanded, else validation, else primary
      "models": {NAME: {
          "role": "teacher" | "student" | "floor", "method": "sft" | "kd" | null, "path": str | null,
          "params": int,
          "latency_p50_s": float, "latency_p95_s": float, "latency_mean_s": float,
          "latencies_s": [float], "tokens_per_s": float,
          "batched_queries_per_s": float, "batched_tokens_per_s": float,
          "peak_rss_mb": float, "cuda_peak_mb": float | null, "device": str, "torch_threads": int,
          "mean_prompt_tokens": float, "mean_completion_tokens": float,
          "cost_per_query_usd": float, "cost_per_1m_queries_usd": float, "cost_per_year_usd": float,
          "price_basis": "hourly" | "tokens",
          "cost_vs_teacher": float | null,             # this model's cost per query / the teacher's
          "speedup_p50_vs_teacher": float | null}},    # teacher p50 latency / this model's
      "splits": {SPLIT: {NAME: {"score": float, "pct_of_teacher": float, "gap_recovered": float | null,
                                "rouge_l": float, "per_category": {CATEGORY: float}, ...}}},
                                # ... and, from the eval stage (potstill.evaluate.compare): "ci95", "diff_vs_teacher",
                                # "diff_ci95", "pct_of_teacher_ci95", "gap_recovered_ci95", "mcnemar_p",
                                # "mcnemar_midp", "per_category_n", "per_category_ci95", "chrf", "agreement",
                                # "repetition", "length_ratio", "top1_agreement", "kl", "judge": {...} | null, ...
      "split_sizes": {SPLIT: int | null},
      "pairs": {SPLIT: [{"a": NAME, "b": NAME,          # students compared, a - b = later method minus earlier
                         "n": int, "diff": float, "diff_ci95": [lo, hi],      # (kd - sft), from the eval stage
                         "pct_points": float | null, "pct_points_ci95": [lo, hi] | null,  # points of % of teacher
                         "better": NAME | null,        # the CI of a - b excludes 0 on this side; null: unclear
                         "per_category": {CATEGORY: {"n", "diff", "diff_ci95", "pct_points",
                                                     "pct_points_ci95", "better"}}}]},  # [] under 2 students
      "break_even": {...} | null,                      # as given in costs["break_even"]
      "training": {METHOD: {"runtime_s": float, "train_loss": float, ...}},
      "warnings": [{"kind": str, "message": str, ...}], # OOD retention, judge reliability, contamination,
                                                       # degeneration (potstill.evaluate.degeneration)
      "notes": [str],                                  # measures that could not be computed, and why
      "contamination": {...} | null, "judge": {...} | null, "bootstrap": {...} | null,  # as in results.json
      "routing": {...} | null,                         # route.json + "curves" (potstill.route.stage), when routed
      "engine": str | null,                            # the engine the answers were scored (and "models" priced) on
      "engines": {"by_engine": {ENGINE: {NAME: {...}}}, "cheapest": {NAME: {"engine", ...}}} | null,
                                                       # potstill.evaluate.cost.engine_costs: >= 2 engines measured
      "teacher_confidence": {...} | null,              # potstill.evaluate.confidence, from the recorded top-k
      "teacher_confidence_by_origin": {ORIGIN: {...}} | null  # the same per prompt origin (original, expand methods)
    }

:func:`build_report` also appends an "Evaluation" section to the model card (README.md) of every
student whose directory has one (:mod:`.card`).

Non-finite numbers are written as null so that the file is strict JSON.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data.config import EXPANDED_VALIDATION
from ..evaluate.degeneration import degeneration_warnings
from ..io import write_json, write_text
from .card import update_model_cards
from .html import render_html
from .markdown import render_markdown
from .tables import fmt_seconds, split_label

ROLE_ORDER = {"teacher": 0, "student": 1, "floor": 2}
PERF_KEYS = (
    "latency_p50_s",
    "latency_p95_s",
    "latency_mean_s",
    "latencies_s",
    "tokens_per_s",
    "batched_queries_per_s",
    "batched_tokens_per_s",
    "peak_rss_mb",
    "cuda_peak_mb",
    "device",
    "torch_threads",
    "mean_prompt_tokens",
    "mean_completion_tokens",
)
COST_KEYS = ("cost_per_query_usd", "cost_per_1m_queries_usd", "cost_per_year_usd", "price_basis")


def _clean(obj):
    """Replace NaN/inf by None (recursively) so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _ratio(a, b):
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b))
    return a / b if ok and b > 0 else None


def _models(results: dict, perf: dict, costs: dict) -> dict:
    names = sorted(results.get("models", {}), key=lambda n: ROLE_ORDER.get(results["models"][n].get("role"), 3))
    out = {}
    for name in names:
        info, p, c = results["models"][name], perf.get(name) or {}, costs.get(name) or {}
        params = info.get("params") if info.get("params") is not None else p.get("params")
        out[name] = {
            "role": info.get("role"),
            "method": info.get("method"),
            "path": info.get("path"),
            "params": params,
            **{k: p.get(k) for k in PERF_KEYS},
            **{k: c.get(k) for k in COST_KEYS},
        }
        if "eval_seconds" in info:
            out[name]["eval_seconds"] = info["eval_seconds"]
    teacher = next((m for m in out.values() if m["role"] == "teacher"), None)
    for m in out.values():
        m["cost_vs_teacher"] = _ratio(m["cost_per_query_usd"], teacher and teacher["cost_per_query_usd"])
        m["speedup_p50_vs_teacher"] = _ratio(teacher and teacher["latency_p50_s"], m["latency_p50_s"])
    return out


def _fraction(cost_vs_teacher: float) -> str:
    """0.05 -> '1/20 of the cost'; 1.3 -> '1.3x the cost'."""
    if cost_vs_teacher <= 0:
        return "no cost"
    if cost_vs_teacher > 1:
        return f"{cost_vs_teacher:.1f}x the cost"
    inv = 1 / cost_vs_teacher
    return f"1/{inv:.0f} of the cost" if inv >= 10 else f"1/{inv:.1f} of the cost".replace(".0 ", " ")


def summary_sentence(report: dict) -> str:
    """'The kd student keeps 91% of the teacher's quality on test (84% OOD) at 1/20 of the cost per query.'"""
    best, primary = report.get("best_student"), report.get("primary_split")
    if primary is None:
        return "No split was evaluated."
    if best is None:
        return "No student model was evaluated."
    m = report["models"][best]

    def quality(split: str, ci: bool = False) -> str:
        q = report["splits"][split].get(best, {})
        pct, interval = q.get("pct_of_teacher"), q.get("pct_of_teacher_ci95")
        text = f"{pct:.0f}%" if isinstance(pct, (int, float)) else "n/a"
        if ci and isinstance(pct, (int, float)) and isinstance(interval, list) and None not in interval:
            text += f" (95% CI {interval[0]:.0f}-{interval[1]:.0f}%)"
        return text

    others = [f"{quality(s)} {split_label(s) if s == 'ood' else 'on ' + s}" for s in report["splits"] if s != primary]
    text = f"The {best} student keeps {quality(primary, ci=True)} of the teacher's quality on {primary}"
    text += f" ({', '.join(others)})" if others else ""
    if m.get("cost_vs_teacher") is not None:
        text += f" at {_fraction(m['cost_vs_teacher'])} per query"
    text += "."
    teacher = next((t for t in report["models"].values() if t["role"] == "teacher"), None)
    if teacher and m.get("speedup_p50_vs_teacher"):
        text += (
            f" Its median batch-1 latency is {fmt_seconds(m['latency_p50_s'])}, against the teacher's "
            f"{fmt_seconds(teacher['latency_p50_s'])} ({m['speedup_p50_vs_teacher']:.1f}x faster)."
        )
    params = (m.get("params"), teacher and teacher.get("params"))
    if all(isinstance(x, int) and x > 0 for x in params):
        text += f" It has {params[1] / params[0]:.1f}x fewer parameters."
    off = [
        w.get("ood_split") or "ood"
        for w in report.get("warnings") or []
        if isinstance(w, dict) and w.get("kind") == "ood_retention" and w.get("model") == best
    ]
    if off:  # ood, and any named eval set (potstill.evaluate.compare.retention_warnings)
        where = " and ".join(split_label(s) if s == "ood" else s for s in off)
        text += f" Warning: its {where} retention is more than 10 points below its in-distribution retention."
    return text


def assemble_report(
    results: dict, perf: dict, costs: dict, training: dict, cfg_summary: dict, routing: dict | None = None
) -> dict:
    """The report dict (see the module docstring for its schema), without writing anything."""
    costs = dict(costs or {})
    break_even = costs.pop("break_even", None)
    models = _models(results, perf or {}, costs)
    splits, sizes, pairs = {}, {}, {}
    for split, data in (results.get("splits") or {}).items():
        sizes[split] = data.get("n")
        splits[split] = {n: dict(data.get("models", {}).get(n) or {}) for n in models if n in data.get("models", {})}
        pairs[split] = [dict(p) for p in data.get("pairs") or [] if p.get("a") in models and p.get("b") in models]
    primary = "test" if "test" in splits else next(iter(splits), None)
    # the student the headline is about is chosen where settings are chosen, not on the test split
    selection = next((s for s in (EXPANDED_VALIDATION, "validation") if s in splits), primary)
    students = [n for n, m in models.items() if m["role"] == "student"]
    best = None
    if students and primary:

        def score(split: str, n: str) -> float:
            s = splits[split].get(n, {}).get("score")
            return s if isinstance(s, (int, float)) else float("-inf")

        best = max(students, key=lambda n: (score(selection, n), score(primary, n)))
    warnings = list(results.get("warnings") or [])
    if cfg_summary.get("teacher_confidence_warning"):
        warnings.append(cfg_summary["teacher_confidence_warning"])
    if not any(isinstance(w, dict) and w.get("kind") == "degeneration" for w in warnings):
        warnings += degeneration_warnings(splits, {n: m["role"] for n, m in models.items()})
    report = {
        "schema_version": 1,
        "name": cfg_summary.get("name"),
        "teacher": cfg_summary.get("teacher"),
        "student": cfg_summary.get("student"),
        "machine": cfg_summary.get("machine"),
        "scorer": results.get("scorer"),
        "queries_per_day": cfg_summary.get("queries_per_day"),
        "prices": cfg_summary.get("prices"),
        "primary_split": primary,
        "summary": "",
        "best_student": best,
        "selection_split": selection if best else None,
        "models": models,
        "splits": splits,
        "split_sizes": sizes,
        "pairs": pairs,
        "break_even": break_even,
        "training": dict(training or {}),
        "warnings": warnings,
        "notes": list(results.get("notes") or []),
        "contamination": results.get("contamination"),
        "judge": results.get("judge"),
        "bootstrap": results.get("bootstrap"),
        "routing": routing,
        "engine": results.get("engine"),
        "engines": cfg_summary.get("engines"),
        "teacher_confidence": cfg_summary.get("teacher_confidence"),
        "teacher_confidence_by_origin": cfg_summary.get("teacher_confidence_by_origin"),
    }
    report = _clean(report)
    report["summary"] = summary_sentence(report)
    return report


def build_report(
    results: dict,
    perf: dict,
    costs: dict,
    training: dict,
    cfg_summary: dict,
    out_dir: Path,
    update_cards: bool = True,
    routing: dict | None = None,
) -> dict:
    """Write ``report.md``, ``report.html`` and ``report.json`` (each atomically) and return the report dict.

    With ``update_cards``, each student's model card (``<path>/README.md``, when it exists) gets the
    evaluation table (:func:`potstill.report.card.update_model_cards`).
    """

    report = assemble_report(results, perf, costs, training, cfg_summary, routing)
    out_dir = Path(out_dir)
    write_text(out_dir / "report.md", render_markdown(report))
    write_text(out_dir / "report.html", render_html(report))
    write_json(out_dir / "report.json", report)
    if update_cards:
        update_model_cards(report)
    return report
