"""The report stage: ``RUN/report/report.{md,html,json}`` from the eval, measure, train and route stages.

Its hash covers those stages' hashes, the prices and the run's name. Break-even (when the one-off
distillation cost is paid back) is computed here from the run's own measured times and prices.
"""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext, Stage, hashed
from ..evaluate.confidence import confidence_by_origin, confidence_warning, prompt_origins, teacher_confidence
from ..evaluate.cost import break_even, engine_costs, run_costs
from ..evaluate.measure import machine
from ..io import read_json, read_jsonl
from ..progress import say
from .build import build_report


def distill_break_even(ctx: RunContext, costs: dict, training: dict) -> dict:
    """One-off distillation cost: the teacher's answers (API spend, or generation time at the
    teacher's hourly price) plus student training time at the higher of the two hourly prices."""
    cfg = ctx.cfg
    gen = read_json(ctx.path("generate") / "stats.json")
    t_hour = cfg.prices.teacher.usd_per_hour or 0.0
    s_hour = cfg.prices.student.usd_per_hour or 0.0
    one_off = gen.get("cost_usd", 0.0) if ctx.teacher.is_api else gen.get("generation_seconds", 0) / 3600 * t_hour
    one_off += sum(t.get("runtime_s", 0) for t in training.values()) / 3600 * max(t_hour, s_hour)
    best = min(cfg.train.methods, key=lambda m: costs[m]["cost_per_query_usd"])
    return break_even(
        one_off, costs["teacher"]["cost_per_query_usd"], costs[best]["cost_per_query_usd"], cfg.prices.queries_per_day
    )


def route_hash(ctx: RunContext) -> str | None:
    return ctx.hashes.get("route") or (ctx.run_dir.done_hash("route") if ctx.cfg.route.enabled else None)


class ReportStage(Stage):
    name = "report"

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        inputs = {
            "eval": ctx.need("eval"),
            "measure": ctx.need("measure"),
            "prices": hashed(ctx.cfg.prices),
            "name": ctx.cfg.name,
            "students": {m: ctx.need(f"students/{m}") for m in ctx.cfg.train.methods},
        }
        if route_hash(ctx):
            inputs["route"] = route_hash(ctx)
        if ctx.cfg.report.export:
            inputs["export"] = hashed(ctx.cfg.report)
        return inputs

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        cfg = ctx.cfg
        routing = None
        if route_hash(ctx):
            routing = {
                **read_json(ctx.path("route") / "route.json"),
                "curves": read_json(ctx.path("route") / "curves.json"),
            }
        results = read_json(ctx.path("eval") / "results.json")
        perf_json = read_json(ctx.path("measure") / "perf.json")
        perf = perf_json["models"]
        training = {m: read_json(ctx.path(f"students/{m}") / "training.json") for m in cfg.train.methods}
        costs = run_costs(cfg.prices, ctx.path("eval"), ctx.path("measure"))
        costs["break_even"] = distill_break_even(ctx, costs, training)
        summary = {
            "name": cfg.name,
            "teacher": ctx.teacher.display,
            "student": cfg.student.model,
            "machine": machine(),
            "queries_per_day": cfg.prices.queries_per_day,
            "prices": cfg.prices.model_dump(mode="json"),
            "engines": engine_costs(cfg.prices, perf_json, {n: m["role"] for n, m in results["models"].items()}),
        }
        generations = read_jsonl(ctx.path("generate") / "generations.jsonl")
        conf = teacher_confidence(generations)
        summary["teacher_confidence"] = conf
        if cfg.expand.enabled:  # where the soft labels carry information: original prompts vs each expand method
            origins = prompt_origins(ctx.train_prompts())
            summary["teacher_confidence_by_origin"] = confidence_by_origin(generations, origins)
        summary["teacher_confidence_warning"] = confidence_warning(conf, cfg.train.kd.temperature)
        report = build_report(results, perf, costs, training, summary, out, routing=routing)
        exported = export_best(ctx, report.get("best_student"), out / "export")
        return {"files": ["report.md", "report.html", "report.json", *exported]}


def export_best(ctx: RunContext, student: str | None, out: Path) -> list[str]:
    """``report.export``: the headline student as GGUF and/or CTranslate2 in ``out``; the paths written."""
    rc = ctx.cfg.report
    if not rc.export or student is None:
        return []
    from ..export.student import export_student  # defers the writers

    written = []
    for fmt in rc.export:
        name = f"{student}.gguf" if fmt == "gguf" else f"{student}-ct2"
        export_student(ctx.path(f"students/{student}"), out / name, fmt, rc.gguf_type if fmt == "gguf" else rc.ct2_type)
        say(f"  exported {student} as {fmt}: {out / name}")
        written.append(f"export/{name}")
    return written


REPORT = ReportStage()


def read_report(ctx: RunContext) -> dict:
    """``report.json`` with the paths of the three report files."""
    report = read_json(ctx.path("report") / "report.json")
    report["paths"] = {k: str(ctx.path("report") / f"report.{k}") for k in ("html", "md", "json")}
    return report
