"""The report stage from hand-written eval/measure/cost results."""

from __future__ import annotations

import json

import pytest

from potstill.config import Price, PricesConfig
from potstill.evaluate.cost import break_even, cost_summary
from potstill.report import build_report, print_summary_table
from potstill.report.tables import fmt_params, fmt_seconds, fmt_usd

ROLES = {"teacher": "teacher", "sft": "student", "kd": "student", "floor": "floor"}


def _q(score, pct, gap, rouge, cats=None):
    q = {"score": score, "rouge_l": rouge, "pct_of_teacher": pct, "gap_recovered": gap}
    if cats is not None:
        q["per_category"] = cats
    return q


def _inputs(evil: str | None = None):
    names = dict(ROLES)
    results = {
        "scorer": "helpdesk",
        "models": {
            "teacher": {"role": "teacher", "method": None, "path": "/m/teacher", "params": 3_700_000},
            "sft": {"role": "student", "method": "sft", "path": "/m/sft", "params": 300_000},
            "kd": {"role": "student", "method": "kd", "path": "/m/kd", "params": 300_000},
            "floor": {"role": "floor", "method": None, "path": "/m/student", "params": 300_000},
        },
        "splits": {
            "test": {
                "n": 300,
                "models": {
                    "teacher": _q(0.9, 100.0, 1.0, 0.8, {"plans": 0.9, "billing": 0.85}),
                    "sft": _q(0.72, 80.0, 0.6, 0.7, {"plans": 0.7, "billing": 0.75}),
                    "kd": _q(0.81, 90.0, 0.8, 0.75, {"plans": 0.8, "billing": 0.8}),
                    "floor": _q(0.45, 50.0, 0.0, 0.3, {"plans": 0.4, "billing": 0.5}),
                },
            },
            "ood": {
                "n": 100,
                "models": {
                    "teacher": _q(0.8, 100.0, 1.0, 0.7),
                    "sft": _q(0.6, 75.0, 0.5, 0.6),
                    "kd": _q(0.68, 85.0, 0.7, 0.65),
                    "floor": _q(0.4, 50.0, None, 0.3),
                },
            },
        },
    }
    student_perf = {
        "params": 300_000,
        "latency_p50_s": 0.02,
        "latency_p95_s": 0.04,
        "latencies_s": [0.02, 0.02, 0.04],
        "tokens_per_s": 400.0,
        "batched_queries_per_s": 40.0,
        "batched_tokens_per_s": 1600.0,
        "peak_rss_mb": 300.0,
        "cuda_peak_mb": None,
        "mean_prompt_tokens": 20.0,
        "mean_completion_tokens": 10.0,
        "device": "cpu",
        "torch_threads": 2,
    }
    perf = {
        "teacher": {
            **student_perf,
            "params": 3_700_000,
            "latency_p50_s": 0.2,
            "latency_p95_s": 0.3,
            "latencies_s": [0.1, 0.2, 0.3],
            "tokens_per_s": 50.0,
            "batched_queries_per_s": 4.0,
            "peak_rss_mb": 1500.0,
        },
        "sft": dict(student_perf),
        "kd": dict(student_perf),
        "floor": dict(student_perf),
    }
    if evil:
        results["models"][evil] = {**results["models"]["kd"], "path": "/m/evil"}
        for split in results["splits"].values():
            split["models"][evil] = dict(split["models"]["kd"])
        perf[evil] = dict(student_perf)
        names[evil] = "student"
    prices = PricesConfig(teacher=Price(usd_per_hour=3.6), student=Price(usd_per_hour=0.72), queries_per_day=50_000)
    costs = cost_summary(prices, perf, names)
    costs["break_even"] = {
        "student": "kd",
        **break_even(10.0, costs["teacher"]["cost_per_query_usd"], costs["kd"]["cost_per_query_usd"], 50_000),
    }
    training = {
        "sft": {"runtime_s": 125.0, "train_loss": 1.2345, "steps": 60},
        "kd": {"runtime_s": 250.0, "train_loss": 0.9876, "steps": 60},
    }
    cfg = {
        "name": "helpdesk-demo",
        "teacher": "tiny-teacher",
        "student": "tiny-student",
        "machine": "2 CPU cores, no GPU, torch 2.13",
        "queries_per_day": 50_000,
        "prices": {"teacher": {}, "student": {}},
    }
    return results, perf, costs, training, cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = build_report(*_inputs(), out_dir=out)
    return out, report


def test_files_and_json_schema(built):
    out, report = built
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file()
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert list(data["models"]) == ["teacher", "sft", "kd", "floor"]
    assert set(data["splits"]) == {"test", "ood"} and data["machine"] == "2 CPU cores, no GPU, torch 2.13"
    kd, teacher = data["models"]["kd"], data["models"]["teacher"]
    assert (kd["role"], kd["method"], kd["params"]) == ("student", "kd", 300_000)
    assert (teacher["role"], teacher["method"], data["models"]["floor"]["role"]) == ("teacher", None, "floor")
    assert (kd["latency_p50_s"], kd["latency_p95_s"], kd["tokens_per_s"], kd["peak_rss_mb"]) == (
        0.02,
        0.04,
        400.0,
        300.0,
    )
    assert teacher["cost_per_query_usd"] == pytest.approx(0.00025)  # 3.6 $/h / 3600 / 4 q/s
    assert teacher["cost_per_1m_queries_usd"] == pytest.approx(250.0)
    assert kd["cost_per_query_usd"] == pytest.approx(5e-6) and kd["cost_per_1m_queries_usd"] == pytest.approx(5.0)
    assert kd["cost_vs_teacher"] == pytest.approx(0.02) and kd["speedup_p50_vs_teacher"] == pytest.approx(10.0)
    assert data["splits"]["test"]["kd"] == {
        "score": 0.81,
        "rouge_l": 0.75,
        "pct_of_teacher": 90.0,
        "gap_recovered": 0.8,
        "per_category": {"plans": 0.8, "billing": 0.8},
    }
    assert data["splits"]["ood"]["floor"]["gap_recovered"] is None
    assert data["split_sizes"] == {"test": 300, "ood": 100}
    assert data["break_even"]["queries"] == 40817 and data["best_student"] == "kd"  # 10 / 0.000245
    assert data["training"]["kd"]["steps"] == 60


def test_summary_and_markdown(built):
    out, report = built
    assert report["summary"].startswith(
        "The kd student keeps 90% of the teacher's quality on test (85% OOD) at 1/50 of the cost per query."
    )
    md = (out / "report.md").read_text()
    assert md.startswith("# potstill report: helpdesk-demo")
    assert report["summary"] in md
    assert (
        "| kd | student | kd | 300K | 20 ms | 40 ms | 400.0 | 300 MB | $0.000005 | $5.00 | 0.810 | 90.0% | 0.80 "
        "| 0.680 | 85.0% | 0.70 |"
    ) in md
    assert "| teacher | teacher | - | 3.7M | 200 ms | 300 ms | 50.0 | 1.46 GB | $0.00025 | $250 | 0.900 | 100.0%" in md
    assert "| floor | floor | - | 300K |" in md and "| 0.400 | 50.0% | n/a |" in md
    assert "## SFT vs KD" in md and "| Metric | sft | kd |" in md and "| Test score | 0.720 | 0.810 |" in md
    assert "| Training time | 2m 05s | 4m 10s |" in md
    assert "## Per category (Test)" in md and "| billing | 0.850 | 0.750 | 0.800 | 0.500 |" in md
    assert "Per category (OOD)" not in md
    assert "## Training" in md and "| kd | 4m 10s | 0.9876 | 60 |" in md
    assert "pays for itself after 40,817 queries" in md
    assert "Measured on: 2 CPU cores, no GPU, torch 2.13." in md


def test_html_self_contained(built):
    out, _ = built
    page = (out / "report.html").read_text()
    assert page.count("<table") >= 5
    assert page.count('src="data:image/png;base64,') >= 4  # quality/cost, scores, latency, categories
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page


def test_html_escapes_model_names(tmp_path):
    evil = "<script>alert('x')</script> $a$"
    report = build_report(*_inputs(evil=evil), out_dir=tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    md = (tmp_path / "report.md").read_text()
    assert "<script" not in md and "&lt;script&gt;" in md
    assert evil in report["models"] and evil in json.loads((tmp_path / "report.json").read_text())["models"]


def test_print_summary_table(built):
    from rich.console import Console

    _, report = built
    console = Console(record=True, width=200)
    print_summary_table(report, console=console)
    text = console.export_text()
    assert "teacher" in text and "kd" in text and "90.0%" in text and "1/50" in text


def test_gap_null_and_missing_perf(tmp_path):
    results, perf, costs, training, cfg = _inputs()
    del perf["floor"], costs["floor"]
    results["splits"].pop("ood")
    report = build_report(results, perf, costs, {}, cfg, out_dir=tmp_path)
    assert report["models"]["floor"]["latency_p50_s"] is None and report["models"]["floor"]["params"] == 300_000
    assert "(" not in report["summary"].split(".")[0]  # no OOD clause
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_formatters():
    assert (fmt_params(3_700_000), fmt_params(300_000), fmt_params(1_500_000_000), fmt_params(None)) == (
        "3.7M",
        "300K",
        "1.5B",
        "n/a",
    )
    assert (fmt_seconds(0.0042), fmt_seconds(0.25), fmt_seconds(2.5), fmt_seconds(3725)) == (
        "4.2 ms",
        "250 ms",
        "2.50 s",
        "1h 02m",
    )
    assert fmt_usd(0.000123456) == "$0.000123"
    assert (fmt_usd(0.00025), fmt_usd(1234.5), fmt_usd(2.5), fmt_usd(0), fmt_usd(float("nan"))) == (
        "$0.00025",
        "$1,234",
        "$2.50",
        "$0",
        "n/a",
    )


def _split(**scores):
    return {"n": 10, "models": {n: _q(s, 100.0 * s / scores["teacher"], None, 0.5) for n, s in scores.items()}}


@pytest.mark.parametrize(
    "splits, best, on",
    [
        # a tie on test: the expanded validation split (where settings are chosen) decides
        (
            {
                "test": _split(teacher=0.9, sft=0.95, kd=0.95),
                "validation_expanded": _split(teacher=0.9, sft=0.8, kd=0.85),
            },
            "kd",
            "validation_expanded",
        ),
        # validation decides even against test; a tie there falls back to test
        (
            {"test": _split(teacher=0.9, sft=0.9, kd=0.8), "validation": _split(teacher=1.0, sft=0.9, kd=0.95)},
            "kd",
            "validation",
        ),
        (
            {"test": _split(teacher=0.9, sft=0.9, kd=0.8), "validation": _split(teacher=1.0, sft=1.0, kd=1.0)},
            "sft",
            "validation",
        ),
        # no validation split: the primary one
        ({"test": _split(teacher=0.9, sft=0.7, kd=0.8), "ood": _split(teacher=0.8, sft=0.7, kd=0.6)}, "kd", "test"),
    ],
)
def test_the_headline_student_is_chosen_on_validation(splits, best, on):
    from potstill.report.build import assemble_report

    models = {"teacher": {"role": "teacher"}, "sft": {"role": "student"}, "kd": {"role": "student"}}
    report = assemble_report({"models": models, "splits": splits}, {}, {}, {}, {})
    assert (report["best_student"], report["selection_split"]) == (best, on)
