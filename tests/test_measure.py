"""Measured speed/memory (in a subprocess) and the cost arithmetic."""

from __future__ import annotations

import pytest

from potstill.errors import UserError
from potstill.evaluate.cost import break_even, cost_per_query, cost_summary, distillation_cost_usd
from potstill.evaluate.measure import RESULT_KEYS, measure_model, percentile


def test_measure_model_tiny_llama(tiny_student_dir):
    from potstill.chat import encode_prompt
    from potstill.models import load_tokenizer

    records = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": text}]}
        for i, text in enumerate(["What is two plus two?", "Name a large animal.", "What do bees make?"])
    ]
    perf = measure_model(tiny_student_dir, records=records, max_new_tokens=4, queries=3, batch_size=2)
    for key in RESULT_KEYS:
        assert key in perf, key
    assert len(perf["latencies_s"]) == 3
    assert perf["latency_p95_s"] >= perf["latency_p50_s"] > 0
    assert perf["peak_rss_mb"] > 0
    assert perf["cuda_peak_mb"] is None or perf["cuda_peak_mb"] > 0
    assert perf["params"] > 0 and perf["torch_threads"] >= 1
    assert perf["batched_queries"] % 4 == 0 and perf["batched_queries"] >= 4 and perf["batched_queries_per_s"] > 0
    assert 1 <= perf["mean_completion_tokens"] <= 4
    tok = load_tokenizer(tiny_student_dir)
    lengths = [len(encode_prompt(tok, r["messages"])) for r in records]
    assert perf["mean_prompt_tokens"] == pytest.approx(sum(lengths) / 3)


def test_measure_model_errors(tmp_path):
    with pytest.raises(UserError):
        measure_model(
            tmp_path / "missing", records=[{"id": "a", "messages": []}], max_new_tokens=1, queries=1, batch_size=1
        )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama"}')
    (bad / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RuntimeError, match="failed"):
        measure_model(
            bad,
            records=[{"id": "a", "messages": [{"role": "user", "content": "hi"}]}],
            max_new_tokens=1,
            queries=1,
            batch_size=1,
        )
    with pytest.raises(ValueError):
        measure_model(bad, records=[], max_new_tokens=1, queries=1, batch_size=1)


def test_percentile():
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


def _price(**kw):
    from potstill.config import Price

    return Price(**kw)


PERF = {"batched_queries_per_s": 2.0, "mean_prompt_tokens": 100.0, "mean_completion_tokens": 50.0}


def test_cost_per_query_hourly_and_tokens():
    assert cost_per_query(_price(usd_per_hour=3.6), PERF) == pytest.approx(0.0005)  # 3.6/3600/2
    tokens = _price(usd_per_1m_input_tokens=3.0, usd_per_1m_output_tokens=15.0)
    assert cost_per_query(tokens, PERF) == pytest.approx((100 * 3 + 50 * 15) / 1e6)
    assert cost_per_query(_price(usd_per_1m_output_tokens=10.0), PERF) == pytest.approx(0.0005)
    with pytest.raises(UserError):
        cost_per_query(_price(), PERF)
    with pytest.raises(ValueError):
        cost_per_query(_price(usd_per_hour=1.0), {"batched_queries_per_s": 0})


def test_cost_summary_roles_and_year():
    from potstill.config import PricesConfig

    prices = PricesConfig(teacher=_price(usd_per_hour=7.2), student=_price(usd_per_hour=0.72), queries_per_day=1000)
    perf = {"teacher": {**PERF, "batched_queries_per_s": 1.0}, "kd": PERF, "floor": PERF}
    out = cost_summary(prices, perf, {"teacher": "teacher", "kd": "student", "floor": "floor"})
    assert out["teacher"]["cost_per_query_usd"] == pytest.approx(0.002)
    assert out["teacher"]["cost_per_1m_queries_usd"] == pytest.approx(2000.0)
    assert out["teacher"]["cost_per_year_usd"] == pytest.approx(0.002 * 1000 * 365)
    assert out["kd"]["cost_per_query_usd"] == pytest.approx(0.0001)
    assert out["floor"] == out["kd"] and out["kd"]["price_basis"] == "hourly"
    with pytest.raises(ValueError, match="role"):
        cost_summary(prices, perf, {"teacher": "teacher"})


def test_break_even():
    assert distillation_cost_usd(1800, 1800, 4.0) == pytest.approx(4.0)
    be = break_even(10.0, 0.002, 0.0015, queries_per_day=5000)
    assert be["savings_per_query_usd"] == pytest.approx(0.0005)
    assert be["queries"] == 20000 and be["days"] == pytest.approx(4.0)
    assert break_even(10.0, 0.003, 0.0007, 1000)["queries"] == 4348  # 10 / 0.0023 = 4347.8
    none = break_even(10.0, 0.001, 0.001, 1000)
    assert none["queries"] is None and none["days"] is None
    assert break_even(0.0, 0.002, 0.001, 1000)["queries"] == 0
