"""The report's engine table: each model's latency, throughput and cost on every measured engine."""

from __future__ import annotations

from .tables import NA, Table, fmt_num, fmt_usd


def engines_table(report: dict) -> Table | None:
    """One row per (engine, model) of ``report["engines"]``; None when one engine was measured."""
    eng = report.get("engines")
    if not eng:
        return None
    rows = []
    for engine, models in eng["by_engine"].items():
        for name, m in models.items():
            cheapest = (eng.get("cheapest") or {}).get(name, {}).get("engine") == engine
            p50 = m.get("latency_p50_s")
            rows.append(
                [
                    engine + (" (scored)" if engine == report.get("engine") else ""),
                    name + (" *" if cheapest else ""),
                    fmt_num(p50 * 1000, ".0f", " ms") if isinstance(p50, (int, float)) else NA,
                    fmt_num(m.get("batched_queries_per_s"), ".1f"),
                    fmt_usd(m.get("cost_per_1m_queries_usd")),
                    fmt_num(1 / m["cost_vs_teacher"], ".1f", "x") if m.get("cost_vs_teacher") else NA,
                ]
            )
    best = [
        f"{n} on {c['engine']} ({1 / c['cost_vs_teacher']:.1f}x cheaper than the teacher on its cheapest)"
        for n, c in (eng.get("cheapest") or {}).items()
        if c.get("cost_vs_teacher") and n in report.get("models", {}) and report["models"][n].get("role") == "student"
    ]
    note = (
        "* marks each model's cheapest engine. Quality was scored on the engine marked (scored); "
        "an int8 engine's answers may differ. Cheapest: " + "; ".join(best) + "."
        if best
        else "* marks each model's cheapest engine."
    )
    headers = [
        "Engine",
        "Model",
        "p50 latency (batch 1)",
        "Batched queries/s",
        "Cost/1M queries",
        "Cheaper than teacher",
    ]
    return Table("Latency and cost per engine", headers, rows, [False, False, True, True, True, True], note=note)
