"""Eval measures: chrF/agreement scorers, degeneration, teacher-forced top-1/KL, and run_eval end to end."""

from __future__ import annotations

import json
import math

import pytest

from potstill.config import EvalConfig, ScorerSpec
from potstill.evaluate.compare import retention_warnings, run_eval
from potstill.evaluate.degeneration import degeneration_summary, length_ratio, repetition_rate
from potstill.evaluate.scorers import build_scorer


def test_chrf_and_agreement_scorers():
    from sacrebleu.metrics import CHRF

    chrf = build_scorer(ScorerSpec(type="chrf", field="__teacher__"))
    ref, hyp = "The Pro plan costs $14 per month.", "Pro costs $14 a month."
    assert chrf(hyp, {}, ref) == pytest.approx(CHRF().sentence_score(hyp, [ref]).score / 100)
    assert chrf(ref, {}, ref) == pytest.approx(1.0) and chrf("x", {}, None) == 0.0
    assert build_scorer(ScorerSpec(type="chrf"))(ref, {"answer": ref}, "other") == pytest.approx(1.0)  # field first
    agree = build_scorer(ScorerSpec(type="agreement"))
    assert agree("The Pro plan costs $14 per month", {}, ref) == 1.0  # normalized: punctuation, case
    assert agree("The Pro plan costs $15 per month.", {}, ref) == 0.0 and agree("x", {}, None) == 0.0


def test_repetition_and_length_ratio():
    assert repetition_rate("the cat sat on the mat") == 0.0
    assert repetition_rate("a b c a b c a b c") == pytest.approx(1 - 3 / 7)  # 7 trigrams, 3 distinct
    assert repetition_rate("go go go go go go") == pytest.approx(1 - 1 / 4)
    assert repetition_rate("too short") == 0.0 and repetition_rate("") == 0.0
    assert length_ratio(["a b", "c d e f"], ["a", "b c"]) == pytest.approx(6 / 3)
    assert length_ratio(["a"], [""]) is None
    rows = [{"text": "a b c a b c", "finish_reason": "length"}, {"text": "", "finish_reason": "stop"}]
    d = degeneration_summary(rows, [{"text": "x y z"}, {"text": "w"}])
    assert d["finish_length_rate"] == 0.5 and d["empty_rate"] == 0.5 and d["length_ratio"] == pytest.approx(6 / 4)
    assert d["repetition"] == pytest.approx((1 - 3 / 4) / 2) and d["mean_words"] == 3.0


def test_teacher_forced_identity_and_kl(tiny_teacher_dir, tiny_student_dir):
    """The teacher against itself agrees on every token with KL 0; an unrelated model does not; KL matches a
    direct computation."""
    import torch

    from potstill.evaluate.teacher_forced import teacher_forced_measures
    from potstill.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_teacher_dir, padding_side="right")
    teacher, other = load_model(tiny_teacher_dir), load_model(tiny_student_dir)
    records = [{"messages": [{"role": "user", "content": q}]} for q in ("What is two plus two?", "What do bees make?")]
    answers = [
        {"text": "Four.", "finish_reason": "stop"},
        {"text": "Honey, of course, bees make honey", "finish_reason": "length"},
    ]
    out = teacher_forced_measures(teacher, {"self": teacher, "other": other}, tok, records, answers, batch_size=1)
    assert out["self"]["top1_agreement"] == 1.0 and out["self"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert out["other"]["kl"] > 1e-4 and out["other"]["tokens"] == out["self"]["tokens"]
    # independent computation, one sequence at a time
    from potstill.train.data import pair_ids

    total_kl, agree, n = 0.0, 0, 0
    vocab = len(tok)
    for rec, ans in zip(records, answers):
        p, r = pair_ids(
            tok,
            {"messages": rec["messages"], "response_text": ans["text"], "finish_reason": ans["finish_reason"]},
            reuse_teacher_ids=False,
        )
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lt = torch.log_softmax(teacher(ids).logits[0, len(p) - 1 : -1, :vocab].double(), -1)
            ls = torch.log_softmax(other(ids).logits[0, len(p) - 1 : -1, :vocab].double(), -1)
        total_kl += float((lt.exp() * (lt - ls)).sum())
        agree += int((lt.argmax(-1) == ls.argmax(-1)).sum())
        n += len(r)
    assert out["other"]["tokens"] == n
    assert out["other"]["kl"] == pytest.approx(total_kl / n, rel=1e-4, abs=2e-6)
    assert out["other"]["top1_agreement"] == pytest.approx(agree / n)
    # batching does not change the numbers
    batched = teacher_forced_measures(teacher, {"other": other}, tok, records, answers, batch_size=8)
    assert batched["other"]["kl"] == pytest.approx(out["other"]["kl"], rel=1e-4, abs=2e-6)


def test_retention_warning():
    def split(pcts):
        return {"models": {n: {"pct_of_teacher": p} for n, p in pcts.items()}}

    roles = {"teacher": "teacher", "sft": "student", "kd": "student", "floor": "floor"}
    res = {
        "test": split({"teacher": 100, "sft": 90.0, "kd": 80.0, "floor": 10}),
        "ood": split({"teacher": 100, "sft": 79.0, "kd": 70.5, "floor": 1}),
    }
    w = retention_warnings(res, roles)
    assert [x["model"] for x in w] == ["sft"] and w[0]["points"] == pytest.approx(11.0)
    assert "more than 10 points" in w[0]["message"]
    assert retention_warnings({"test": res["test"]}, roles) == []


def _records(n, offset=0):
    from conftest import QA

    return [
        {
            "id": f"r{i + offset}",
            "messages": [{"role": "user", "content": QA[(i + offset) % len(QA)][0]}],
            "answer": QA[(i + offset) % len(QA)][1],
            "category": "even" if i % 2 == 0 else "odd",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    out, work = tmp_path_factory.mktemp("eval"), tmp_path_factory.mktemp("work")
    cfg = EvalConfig(
        scorer=ScorerSpec(type="normalized", field="answer"),
        max_new_tokens=5,
        batch_size=4,
        bootstrap_samples=500,
        scorers=[ScorerSpec(type="rouge_l", name="rouge_gold", field="answer")],
        judge={"max_new_tokens": 8, "batch_size": 8},
    )
    models = {
        "teacher": {"path": tiny_teacher_dir, "role": "teacher"},
        "sft": {"path": tiny_student_dir, "role": "student", "method": "sft"},  # the same weights as kd
        "kd": {"path": tiny_student_dir, "role": "student", "method": "kd"},
        "floor": {"path": tiny_student_dir, "role": "floor", "init": "random"},
    }
    splits = {"test": _records(6), "ood": _records(4, offset=6)}
    results = run_eval(cfg, models, splits, out, work, seed=0, contamination={"splits": {}}, warnings=["note x"])
    return out, results


def test_run_eval_results_schema(evaluated):
    out, results = evaluated
    assert json.loads((out / "results.json").read_text()) == results
    assert results["bootstrap"] == {"samples": 500, "seed": 0, "level": 0.95, "method": "paired percentile"}
    assert results["warnings"][0] == {"kind": "contamination", "message": "note x"}
    assert [w["kind"] for w in results["warnings"]].count("judge_reliability") <= 1  # one line for the whole judge
    assert results["judge"]["replies"] == sum(
        m["judge"]["replies"] for s in results["splits"].values() for m in s["models"].values() if m["judge"]
    )
    assert results["judge"]["model"].endswith(str(results["models"]["teacher"]["path"])[-10:])
    assert results["models"]["kd"]["eval_seconds"] >= 0
    for split in ("test", "ood"):
        for name, m in results["splits"][split]["models"].items():
            lo, hi = m["ci95"]
            assert lo <= m["score"] <= hi
            assert m["diff_vs_teacher"] == pytest.approx(
                m["score"] - results["splits"][split]["models"]["teacher"]["score"], abs=1e-6
            )
            for key in ("chrf", "agreement", "repetition", "length_ratio", "rouge_l", "binary", "n"):
                assert key in m
            assert set(m["per_category_ci95"]) == set(m["per_category"]) == set(m["per_category_n"])
            assert m["scorers"]["rouge_gold"]["score"] is not None
            if name == "teacher":
                assert m["judge"] is None and m["top1_agreement"] is None and m["mcnemar_p"] is None
                assert m["agreement"] == 1.0 and m["diff_ci95"] == [0.0, 0.0]
            else:
                assert 0 <= m["top1_agreement"] <= 1 and m["kl"] >= 0
                assert m["binary"] and 0 <= m["mcnemar_p"] <= 1
                j = m["judge"]
                assert j["n"] == results["splits"][split]["n"] and j["replies"] == 2 * (j["n"] - j["identical"])
                rates = [j[k] for k in ("win", "tie", "loss") if j[k] is not None]
                assert not rates or sum(rates) == pytest.approx(1.0)
        # two students with the same weights give the same greedy answers: a difference of exactly 0
        (pair,) = results["splits"][split]["pairs"]
        assert (pair["a"], pair["b"]) == ("kd", "sft") and pair["diff"] == 0.0 and pair["diff_ci95"] == [0.0, 0.0]
        assert pair["better"] is None and set(pair["per_category"]) == {"even", "odd"}
    rows = [json.loads(x) for x in (out / "judge" / "kd__test.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("rationale" in o for r in rows for o in r["orders"])
    answers = [json.loads(x) for x in (out / "answers" / "kd__test.jsonl").read_text().splitlines()]
    assert all({"score", "rouge_l", "chrf", "agreement"} <= set(a) for a in answers)
    assert all(math.isfinite(a["chrf"]) for a in answers)
