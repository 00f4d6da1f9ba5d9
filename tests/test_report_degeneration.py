"""Degenerate student answers (repetition, empty, cut at max_new_tokens) are flagged in the report's warnings."""

from __future__ import annotations

from potstill.evaluate.degeneration import degeneration_warnings
from potstill.report.build import assemble_report
from potstill.report.card import evaluation_markdown
from potstill.report.markdown import render_markdown

ROLES = {"teacher": "teacher", "sft": "student", "kd": "student", "floor": "floor"}


def measures(repetition=0.02, empty=0.0, cut=0.02, score=0.8):
    return {
        "score": score,
        "repetition": repetition,
        "empty_rate": empty,
        "finish_length_rate": cut,
        "length_ratio": 1.0,
        "mean_words": 20.0,
    }


def results() -> dict:
    """results.json as the eval stage writes it: degeneration measures per model and split."""
    return {
        "scorer": "rouge_l",
        "models": {
            n: {"role": r, "method": n if r == "student" else None, "path": None, "params": 1000}
            for n, r in ROLES.items()
        },
        "splits": {
            "test": {
                "n": 100,
                "models": {
                    "teacher": measures(repetition=0.05, cut=0.04),
                    "sft": measures(repetition=0.35, cut=0.30, score=0.4),  # loops
                    "kd": measures(repetition=0.08, cut=0.06),  # fine
                    "floor": measures(repetition=0.9, empty=0.5, cut=1.0, score=0.0),
                },
            },
            "ood": {
                "n": 50,
                "models": {
                    "teacher": measures(repetition=0.15),
                    "sft": measures(repetition=0.25),  # > 0.2 but < 2x the teacher's
                    "kd": measures(empty=0.12),  # empty answers
                    "floor": measures(repetition=0.9, empty=0.5, cut=1.0),
                },
            },
        },
        "warnings": [{"kind": "ood_retention", "model": "kd", "message": "kd: OOD retention ..."}],
    }


def test_warnings_per_student_and_split():
    res = results()
    splits = {s: d["models"] for s, d in res["splits"].items()}
    found = {(w["model"], w["split"]): w for w in degeneration_warnings(splits, ROLES)}
    assert set(found) == {("sft", "test"), ("kd", "ood")}  # never the teacher or the untrained floor
    sft, kd = found["sft", "test"], found["kd", "ood"]
    assert set(sft["measures"]) == {"repetition", "finish_length_rate"}
    assert sft["measures"]["repetition"] == {"model": 0.35, "teacher": 0.05}
    assert sft["message"] == (
        "sft on test: degenerate answers: 35% repeated word 3-grams (teacher 5%), 30% answers "
        "cut at max_new_tokens (teacher 4%); read its answers before trusting its scores"
    )
    assert set(kd["measures"]) == {"empty_rate"} and "12% empty answers (teacher 0%)" in kd["message"]


def test_without_a_teacher_measure_the_floor_alone_decides():
    splits = {"test": {"teacher": {"repetition": None}, "kd": measures(repetition=0.3)}}
    (w,) = degeneration_warnings(splits, {"teacher": "teacher", "kd": "student"})
    assert w["measures"]["repetition"] == {"model": 0.3, "teacher": None} and "(teacher" not in w["message"]


def test_report_shows_and_flags_them():
    report = assemble_report(results(), {}, {}, {}, {"name": "degenerate"})
    kinds = [w["kind"] for w in report["warnings"]]
    assert kinds == ["ood_retention", "degeneration", "degeneration"]  # the eval stage's warnings kept first
    md = render_markdown(report)
    warnings = md.split("## Warnings")[1].split("\n## ")[0]
    assert "sft on test: degenerate answers: 35% repeated word 3-grams" in warnings
    assert "kd on OOD" not in warnings and "kd on ood: degenerate answers: 12% empty answers" in warnings
    table = md.split("## Agreement with the teacher and degeneration")[1].split("\n## ")[0]
    assert table.splitlines()[2].endswith("| Hit max tokens | Empty answers |")
    assert (
        "| sft | Test | 35.0% | 1.00 | 30.0% | 0.0% |" in table and "| kd | OOD | 2.0% | 1.00 | 2.0% | 12.0% |" in table
    )
    # each student's model card carries its own warnings only
    card = evaluation_markdown(report, "kd")
    assert "kd on ood: degenerate answers" in card and "sft on test" not in card
    # rebuilt from a report's results that already hold them: not added twice
    again = assemble_report({**results(), "warnings": report["warnings"]}, {}, {}, {}, {})
    assert [w["kind"] for w in again["warnings"]] == kinds
