"""Cost per query from measured throughput and configured prices, and when distillation pays off.

Prices are :class:`potstill.config.Price` objects (anything with ``usd_per_hour``,
``usd_per_1m_input_tokens`` and ``usd_per_1m_output_tokens`` attributes works).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..io import read_json

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Price, PricesConfig


def price_basis(price: Price) -> str:
    """``"hourly"`` when the price is hardware rent, ``"tokens"`` for API token prices."""
    if price.usd_per_hour is not None:
        return "hourly"
    if price.usd_per_1m_input_tokens is not None or price.usd_per_1m_output_tokens is not None:
        return "tokens"
    raise UserError("a price needs usd_per_hour or usd_per_1m_input_tokens/usd_per_1m_output_tokens")


def cost_per_query(price: Price, perf: dict) -> float:
    """USD per query for one model.

    * Hourly price (``usd_per_hour``, preferred when both kinds are set):
      ``usd_per_hour / 3600 / batched_queries_per_s``. Assumption: the hardware is rented by the
      hour and kept busy at the measured *batched* throughput (``perf["batched_queries_per_s"]``);
      idle time is not charged, so real costs at low traffic are higher.
    * Token prices: ``(mean_prompt_tokens * usd_per_1m_input_tokens
      + mean_completion_tokens * usd_per_1m_output_tokens) / 1e6`` (a missing price counts as 0).
    """
    if price_basis(price) == "hourly":
        qps = perf.get("batched_queries_per_s")
        if not qps or qps <= 0:
            raise ValueError("hourly pricing needs a positive perf['batched_queries_per_s']")
        return price.usd_per_hour / 3600.0 / qps
    usd_in = price.usd_per_1m_input_tokens or 0.0
    usd_out = price.usd_per_1m_output_tokens or 0.0
    return (perf["mean_prompt_tokens"] * usd_in + perf["mean_completion_tokens"] * usd_out) / 1e6


def cost_summary(prices: PricesConfig, perf_by_model: dict, roles: dict) -> dict:
    """Cost per query, per million queries and per year for every measured model.

    ``roles`` maps each model name to ``"teacher"``, ``"student"`` or ``"floor"``: the teacher is
    priced with ``prices.teacher``, the others with ``prices.student``. A year is
    ``prices.queries_per_day * 365`` queries. Returns
    ``{name: {"cost_per_query_usd", "cost_per_1m_queries_usd", "cost_per_year_usd", "price_basis"}}``.
    """
    out = {}
    for name, perf in perf_by_model.items():
        if name not in roles:
            raise ValueError(f"no role given for model '{name}'")
        price = prices.teacher if roles[name] == "teacher" else prices.student
        per_query = cost_per_query(price, perf)
        out[name] = {
            "cost_per_query_usd": per_query,
            "cost_per_1m_queries_usd": per_query * 1e6,
            "cost_per_year_usd": per_query * prices.queries_per_day * 365,
            "price_basis": price_basis(price),
        }
    return out


def distillation_cost_usd(train_s: float, generate_s: float, usd_per_hour: float) -> float:
    """One-off cost of distilling: (training time + teacher generation time) at an hourly price."""
    return (train_s + generate_s) / 3600.0 * usd_per_hour


def break_even(
    distill_cost_usd: float, teacher_cost_per_query: float, student_cost_per_query: float, queries_per_day: int
) -> dict:
    """Queries and days until the one-off distillation cost is paid back by per-query savings.

    Returns ``{"distill_cost_usd", "savings_per_query_usd", "queries", "days"}``: ``queries`` is the
    smallest whole number of queries whose savings cover the cost, ``days`` is
    ``queries / queries_per_day``. Both are None when the student saves nothing per query.
    """
    savings = teacher_cost_per_query - student_cost_per_query
    out = {"distill_cost_usd": distill_cost_usd, "savings_per_query_usd": savings, "queries": None, "days": None}
    if savings > 0:
        queries = max(0, math.ceil(distill_cost_usd / savings * (1 - 1e-12)))  # forgive float noise
        out["queries"] = queries
        out["days"] = queries / queries_per_day
    return out


def run_costs(prices: PricesConfig, eval_dir: Path, measure_dir: Path) -> dict:
    """Cost per query of every measured model of a run (its eval results, measured perf and the prices)."""
    results = read_json(Path(eval_dir) / "results.json")
    perf = read_json(Path(measure_dir) / "perf.json")["models"]
    return cost_summary(prices, perf, {n: m["role"] for n, m in results["models"].items()})


def engine_costs(prices: PricesConfig, perf_json: dict, roles: dict) -> dict | None:
    """Latency, throughput and cost of every model on every measured engine (``perf.json``'s
    ``engines``), and each model's cheapest engine; None for a run measured on one engine only.

    Returns ``{"engine": the eval engine, "by_engine": {engine: {model: {...}}}, "cheapest": {model:
    {"engine", "cost_per_1m_queries_usd", "cost_vs_teacher"}}}``. ``cheapest``'s ratio puts the
    teacher on its own cheapest engine too: the saving a user gets deploying each where it runs best.
    """
    engines = perf_json.get("engines") or {}
    if len(engines) < 2:
        return None
    by_engine = {}
    for engine, perf in engines.items():
        costs = cost_summary(prices, perf, {n: roles[n] for n in perf if n in roles})
        teacher = next((costs[n]["cost_per_query_usd"] for n in costs if roles[n] == "teacher"), None)
        by_engine[engine] = {
            n: {
                "latency_p50_s": perf[n].get("latency_p50_s"),
                "batched_queries_per_s": perf[n].get("batched_queries_per_s"),
                "peak_rss_mb": perf[n].get("peak_rss_mb"),
                "cost_per_1m_queries_usd": c["cost_per_1m_queries_usd"],
                "cost_vs_teacher": c["cost_per_query_usd"] / teacher if teacher else None,
            }
            for n, c in costs.items()
        }
    cheapest = {}
    for name in roles:
        options = [(e, m[name]["cost_per_1m_queries_usd"]) for e, m in by_engine.items() if name in m]
        if options:
            engine, cost = min(options, key=lambda x: x[1])
            cheapest[name] = {"engine": engine, "cost_per_1m_queries_usd": cost}
    teacher = next((cheapest[n]["cost_per_1m_queries_usd"] for n in cheapest if roles[n] == "teacher"), None)
    for c in cheapest.values():
        c["cost_vs_teacher"] = c["cost_per_1m_queries_usd"] / teacher if teacher else None
    return {"engine": perf_json.get("engine"), "by_engine": by_engine, "cheapest": cheapest}
