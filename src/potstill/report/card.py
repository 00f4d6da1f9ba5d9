"""The evaluation section of each student's model card (README.md next to its weights).

:func:`update_model_cards` appends (or replaces, on a re-run) a ``## Evaluation`` section with the
student's numbers against the teacher on every split - score with its 95% interval, % of teacher,
gap recovered, McNemar's p, agreement and degeneration measures, the judge's verdicts - plus its
speed and cost and the evaluation's provenance (teacher, scorer, split sizes, contamination,
bootstrap, judge, machine). The card's training provenance was written at export time
(:func:`potstill.train.card.write_model_card`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..train.card import append_card_section
from .markdown import md_escape
from .tables import fmt_num, fmt_p, fmt_pct, fmt_seconds, fmt_usd, fmt_with_ci, split_label

SECTION = "Evaluation"


def evaluation_markdown(report: dict, name: str) -> str:
    """The card section for the student ``name`` of ``report`` (markdown, without its heading)."""
    teacher = next((n for n, m in report["models"].items() if m.get("role") == "teacher"), None)
    rows = [
        "| Split | n | Score [95% CI] | Teacher | vs teacher [95% CI] | % of teacher [95% CI] | Gap recovered [95% CI] "
        "| McNemar p | ROUGE-L | chrF | Top-1 agr. | KL | Repetition | Length ratio | Judge W/T/L |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, by_model in report["splits"].items():
        q, t = by_model.get(name) or {}, by_model.get(teacher) or {}
        j = q.get("judge") or {}
        wtl = "/".join(fmt_pct(j.get(k)) for k in ("win", "tie", "loss")) if j.get("decided") else "n/a"
        size = (report.get("split_sizes") or {}).get(s)
        rows.append(
            "| "
            + " | ".join(
                [
                    split_label(s),
                    str(size) if size is not None else "n/a",
                    fmt_with_ci(q.get("score"), q.get("ci95")),
                    fmt_num(t.get("score")),
                    fmt_with_ci(q.get("diff_vs_teacher"), q.get("diff_ci95"), "+.3f"),
                    fmt_with_ci(q.get("pct_of_teacher"), q.get("pct_of_teacher_ci95"), ".1f", "%"),
                    fmt_with_ci(q.get("gap_recovered"), q.get("gap_recovered_ci95"), ".2f"),
                    fmt_p(q.get("mcnemar_p")),
                    fmt_num(q.get("rouge_l")),
                    fmt_num(q.get("chrf")),
                    fmt_pct(q.get("top1_agreement")),
                    fmt_num(q.get("kl")),
                    fmt_pct(q.get("repetition")),
                    fmt_num(q.get("length_ratio"), ".2f"),
                    wtl,
                ]
            )
            + " |"
        )
    m = report["models"].get(name) or {}
    tm = report["models"].get(teacher) or {}
    lines = [
        f"Evaluated by potstill against the teacher `{md_escape(report.get('teacher') or teacher or 'n/a')}` "
        f"with the scorer `{md_escape(report.get('scorer') or 'n/a')}`.",
        "",
        *rows,
        "",
    ]
    speed = [
        f"p50 latency {fmt_seconds(m.get('latency_p50_s'))} (teacher {fmt_seconds(tm.get('latency_p50_s'))})",
        f"cost per query {fmt_usd(m.get('cost_per_query_usd'))} (teacher {fmt_usd(tm.get('cost_per_query_usd'))})",
    ]
    lines += ["Measured on " + md_escape(report.get("machine") or "n/a") + ": " + "; ".join(speed) + ".", ""]
    warnings = [w for w in report.get("warnings") or [] if not isinstance(w, dict) or w.get("model") in (None, name)]
    for w in warnings:
        lines.append(f"- **warning**: {md_escape(w.get('message') if isinstance(w, dict) else w)}")
    if warnings:
        lines.append("")
    boot = report.get("bootstrap") or {}
    judge = report.get("judge") or {}
    cont = report.get("contamination") or {}
    provenance = {
        "run": report.get("name"),
        "teacher": report.get("teacher"),
        "student_base": report.get("student"),
        "scorer": report.get("scorer"),
        "split_sizes": report.get("split_sizes"),
        "confidence_intervals": f"paired percentile bootstrap, {boot.get('samples')} resamples, seed {boot.get('seed')}"
        if boot
        else None,
        "judge": judge.get("model"),
        "contamination": {
            s: {"contaminated_rate": d.get("contaminated_rate"), "mean_ngram_overlap": d.get("mean_ngram_overlap")}
            for s, d in (cont.get("splits") or {}).items()
        }
        or None,
        "machine": report.get("machine"),
    }
    lines += [
        "Evaluation provenance:",
        "",
        "```json",
        json.dumps(provenance, indent=2, sort_keys=True, default=str),
        "```",
    ]
    return "\n".join(lines)


def update_model_cards(report: dict) -> list[Path]:
    """Append the evaluation section to every student's README.md that exists; returns the cards written."""
    written = []
    for name, m in report.get("models", {}).items():
        if m.get("role") != "student" or not m.get("path"):
            continue
        card = Path(m["path"]) / "README.md"
        if not card.is_file():
            continue
        written.append(append_card_section(card.parent, SECTION, evaluation_markdown(report, name)))
    return written


__all__ = ["evaluation_markdown", "update_model_cards"]
