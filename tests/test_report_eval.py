"""The report's evaluation additions: CI tables, agreement/degeneration, judge, contamination, warnings,
plots with error bars, break-even plot, and the students' model cards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potstill.config import Price, PricesConfig
from potstill.evaluate.compare import retention_warnings, student_pairs, summarize
from potstill.evaluate.contamination import contamination_report
from potstill.evaluate.cost import break_even, cost_summary
from potstill.evaluate.judge import judge_summary
from potstill.report import build_report, print_summary_table
from potstill.report.sections import make_plots
from potstill.train.card import append_card_section

ROLES = {"teacher": "teacher", "sft": "student", "kd": "student", "floor": "floor"}
CATS = ["plans", "errors", "howto"]


def _judge_rows(n, rng, p_win, p_tie):
    rows = []
    for i in range(n):
        u = rng.random()
        outcome = "win" if u < p_win else ("tie" if u < p_win + p_tie else "loss")
        verdict = {"win": "A", "tie": "tie", "loss": "B"}[outcome]
        flipped = {"A": "B", "B": "A", "tie": "tie"}[verdict]
        rows.append(
            {
                "id": str(i),
                "outcome": outcome,
                "identical": False,
                "consistent": True,
                "orders": [
                    {
                        "student_position": "A",
                        "verdict": verdict,
                        "parse": "strict",
                        "outcome": outcome,
                        "rationale": "r",
                    },
                    {
                        "student_position": "B",
                        "verdict": flipped,
                        "parse": "similarity",
                        "outcome": outcome,
                        "rationale": "r",
                    },
                ],
            }
        )
    return rows


def full_inputs(tmp_path, ood_gap: float = 0.25):
    """A realistic eval result (through the real summarize/judge_summary) plus perf, costs and training."""
    rng = np.random.default_rng(0)
    student_dirs = {}
    for m in ("sft", "kd"):
        d = tmp_path / "students" / m
        d.mkdir(parents=True)
        (d / "README.md").write_text(f"# demo: {m} student\n\n## Provenance\n\n```json\n{{}}\n```\n")
        student_dirs[m] = d
    results = {
        "scorer": "fact_accuracy",
        "models": {
            "teacher": {
                "role": "teacher",
                "method": None,
                "path": "/m/teacher",
                "params": 4_458_752,
                "eval_seconds": 30.0,
            },
            "sft": {
                "role": "student",
                "method": "sft",
                "path": str(student_dirs["sft"]),
                "params": 430_800,
                "eval_seconds": 4.0,
            },
            "kd": {
                "role": "student",
                "method": "kd",
                "path": str(student_dirs["kd"]),
                "params": 430_800,
                "eval_seconds": 4.0,
            },
            "floor": {"role": "floor", "method": None, "path": "/m/student", "params": 430_800, "eval_seconds": 4.0},
        },
        "splits": {},
        "notes": ["teacher-forced: a note"],
        "bootstrap": {"samples": 2000, "seed": 0, "level": 0.95, "method": "paired percentile"},
        "judge": {"model": "/m/teacher", "fallback": "similarity"},
    }
    for split, n, drop in (("test", 200, 0.0), ("ood", 120, ood_gap)):
        records = [{"category": CATS[i % 3]} for i in range(n)]
        teacher = (rng.random(n) < 0.85).astype(float)
        scores = {"teacher": teacher}
        for m, keep in (("sft", 0.8), ("kd", 0.9)):
            scores[m] = np.where(rng.random(n) < keep - drop, teacher, 0.0)
        scores["floor"] = np.zeros(n)
        scores = {k: list(v) for k, v in scores.items()}
        summary = summarize(scores, ROLES, records, {k: [0.5] * n for k in scores}, samples=2000, seed=0)
        for name, q in summary.items():
            q.update(
                {
                    "chrf": 0.6,
                    "agreement": 0.5,
                    "repetition": 0.02,
                    "length_ratio": 0.95,
                    "finish_length_rate": 0.01,
                    "top1_agreement": 0.8 if name != "teacher" else None,
                    "kl": 0.3 if name != "teacher" else None,
                    "scorers": {"rouge_gold": {"score": 0.4, "ci95": [0.35, 0.45]}},
                }
            )
            q["judge"] = (
                None
                if name == "teacher"
                else judge_summary(_judge_rows(n, rng, 0.2, 0.5), scores[name], scores["teacher"], samples=500)
            )
        pairs = student_pairs(scores, ROLES, records, samples=2000, seed=0)
        results["splits"][split] = {"n": n, "models": summary, "pairs": pairs}
    results["warnings"] = retention_warnings(results["splits"], ROLES)
    results["contamination"] = contamination_report(
        {"test": [{"id": "e", "messages": [{"role": "user", "content": "How much is Pro?"}]}]},
        [{"id": "t", "messages": [{"role": "user", "content": "How much is the Team plan?"}]}],
    )
    results["contamination"].update(threshold=0.05, forced=False, refused=False)
    perf_one = {
        "latency_p50_s": 0.02,
        "latency_p95_s": 0.04,
        "latencies_s": list(rng.uniform(0.01, 0.05, 24)),
        "tokens_per_s": 400.0,
        "batched_queries_per_s": 40.0,
        "peak_rss_mb": 300.0,
        "mean_prompt_tokens": 20.0,
        "mean_completion_tokens": 10.0,
    }
    perf = {
        "teacher": {
            **perf_one,
            "latency_p50_s": 0.2,
            "batched_queries_per_s": 4.0,
            "latencies_s": list(rng.uniform(0.1, 0.3, 24)),
        },
        "sft": dict(perf_one),
        "kd": dict(perf_one),
        "floor": dict(perf_one),
    }
    prices = PricesConfig(teacher=Price(usd_per_hour=0.1), student=Price(usd_per_hour=0.1), queries_per_day=50_000)
    costs = cost_summary(prices, perf, ROLES)
    costs["break_even"] = break_even(
        0.02, costs["teacher"]["cost_per_query_usd"], costs["kd"]["cost_per_query_usd"], 50_000
    )
    training = {"sft": {"runtime_s": 100.0}, "kd": {"runtime_s": 200.0}}
    cfg = {
        "name": "helpdesk",
        "teacher": "teacher",
        "student": "student",
        "machine": "2 cores",
        "queries_per_day": 50_000,
        "prices": {},
    }
    return results, perf, costs, training, cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    inputs = full_inputs(tmp)
    out = tmp / "report"
    report = build_report(*inputs, out_dir=out)
    return tmp, out, report


def test_report_json_carries_eval_statistics(built):
    _, out, report = built
    data = json.loads((out / "report.json").read_text())
    kd = data["splits"]["test"]["kd"]
    for key in (
        "ci95",
        "diff_ci95",
        "pct_of_teacher_ci95",
        "gap_recovered_ci95",
        "mcnemar_p",
        "chrf",
        "agreement",
        "repetition",
        "length_ratio",
        "top1_agreement",
        "kl",
        "judge",
        "per_category_ci95",
    ):
        assert key in kd
    assert [w["kind"] for w in data["warnings"]] == ["ood_retention", "ood_retention"]
    assert data["contamination"]["splits"]["test"]["n"] == 1 and data["judge"]["model"] == "/m/teacher"
    assert data["notes"] == ["teacher-forced: a note"] and data["bootstrap"]["samples"] == 2000
    assert data["models"]["kd"]["eval_seconds"] == 4.0
    assert "(95% CI " in data["summary"] and "Warning: its OOD retention" in data["summary"]


def test_markdown_tables(built):
    _, out, report = built
    md = (out / "report.md").read_text()
    for heading in (
        "## Warnings",
        "## Quality with 95% confidence intervals (Test)",
        "## Quality with 95% confidence intervals (OOD)",
        "## Agreement with the teacher and degeneration",
        "## More scorers",
        "## LLM judge vs the teacher",
        "## Contamination check",
        "## Notes",
        "## Per category (Test)",
    ):
        assert heading in md, heading
    q = report["splits"]["test"]["kd"]
    cell = f"{q['score']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}]"
    assert f"| kd | {cell} |" in md
    assert "| Metric | sft | kd |" in md and "| Test score 95% CI |" in md
    assert "OOD retention" in md and "| Model | Split | ROUGE-L | chrF | Same answer | Top-1 agreement |" in md
    assert "| Category | teacher | sft | kd | floor | n |" in md


def test_html_has_all_figures(built):
    _, out, report = built
    titles = [t for t, _ in make_plots(report)]
    assert "Difference to the teacher with 95% confidence intervals" in titles
    assert "Break-even: cumulative cost, from the run's measured costs" in titles
    assert "Latency distribution (batch 1)" in titles and "Per-category score (Test)" in titles
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(titles) >= 7
    assert '<div class="warnings" id="warnings">' in page and "<script" not in page and "http" not in page


def test_model_cards_get_the_evaluation_section(built):
    tmp, _, report = built
    card = (tmp / "students" / "kd" / "README.md").read_text()
    assert card.startswith("# demo: kd student") and "## Provenance" in card  # training part kept
    assert card.count("## Evaluation") == 1 and "| Split | n | Score [95% CI] |" in card
    assert '"judge": "/m/teacher"' in card and "paired percentile bootstrap" in card
    assert "kd: OOD retention" in card and "sft: OOD retention" not in card  # only its own warnings
    # a re-run replaces the section instead of appending a second one
    build_report(*full_inputs(tmp / "again"), out_dir=tmp / "again" / "report")
    append_card_section(tmp / "students" / "kd", "Evaluation", "x")
    assert (tmp / "students" / "kd" / "README.md").read_text().count("## Evaluation") == 1


def test_no_warning_when_ood_holds(tmp_path):
    report = build_report(*full_inputs(tmp_path, ood_gap=0.0), out_dir=tmp_path / "r")
    assert not [w for w in report["warnings"] if w["kind"] == "ood_retention"]


def test_students_compared_section(built):
    _, out, report = built
    data = json.loads((out / "report.json").read_text())
    (pair,) = data["pairs"]["test"]
    assert (pair["a"], pair["b"]) == ("kd", "sft") and set(pair["per_category"]) == set(CATS)
    q = report["splits"]["test"]
    assert pair["pct_points"] == pytest.approx(q["kd"]["pct_of_teacher"] - q["sft"]["pct_of_teacher"], abs=2e-3)
    md = (out / "report.md").read_text()
    assert "## Students compared (Test)" in md and "## Students compared (OOD)" in md
    assert "| Pair | Category | Points of teacher % | 95% CI | Score difference [95% CI] | Verdict | n |" in md
    lo, hi = pair["pct_points_ci95"]
    verdict = "kd better" if pair["better"] == "kd" else "no clear difference"
    row = f"| kd − sft | all | {pair['pct_points']:+.1f} | [{lo:+.1f}, {hi:+.1f}] | "
    assert row in md and f"| {verdict} | 200 |" in md
    assert md.index("## Students compared (Test)") < md.index("## Per category (Test)")
    assert all(f"| kd − sft | {c} |" in md for c in CATS)
    page = (out / "report.html").read_text()
    assert "<h2>Students compared (Test)</h2>" in page and "<td>kd − sft</td>" in page and verdict in page


def test_students_compared_in_the_printed_summary(built):
    from rich.console import Console

    _, _, report = built
    console = Console(record=True, width=300)
    print_summary_table(report, console=console)
    text = console.export_text()
    assert "Students compared: kd − sft on Test: " in text and "Students compared: kd − sft on OOD: " in text


def test_no_students_compared_with_one_student(tmp_path):
    results, perf, costs, training, cfg = full_inputs(tmp_path)
    del results["models"]["sft"]
    for split in results["splits"].values():
        del split["models"]["sft"]
        split["pairs"] = student_pairs(
            {"teacher": [1.0, 0.0], "kd": [1.0, 1.0]}, {"teacher": "teacher", "kd": "student"}, [{}, {}]
        )
    report = build_report(results, perf, costs, training, cfg, out_dir=tmp_path / "r")
    assert report["pairs"] == {"test": [], "ood": []}
    assert "Students compared" not in (tmp_path / "r" / "report.md").read_text()
    assert "Students compared" not in (tmp_path / "r" / "report.html").read_text()
