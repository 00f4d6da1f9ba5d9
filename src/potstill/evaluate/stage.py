"""The eval and measure stages: teacher vs students on the held-out splits, then speed, memory and cost.

``eval`` (``RUN/eval/``): every model answers every evaluation split, the task's scorer and the
statistics compare them (:func:`.compare.run_eval`), with the judge when it is on. Answers are kept
in ``RUN/.cache/answers/`` keyed by (model, split, generation settings): a change of scorer, judge or
bootstrap reruns the stage from the kept answers without generating again.

``measure`` (``RUN/measure/perf.json``): latency, throughput and peak memory of each local model in
a fresh subprocess (an API teacher is priced from its token counts instead).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.markup import escape

from ..context import RunContext, Stage
from ..io import read_json, read_jsonl, write_json
from ..models import param_count
from ..progress import say
from ..report.tables import pair_line
from ..teachers.generate import api_answers
from ..teachers.spec import parse_model
from .compare import run_eval
from .contamination import check_contamination, contamination_report
from .judge import api_judge, local_judge
from .judging import auto_judge
from .measure import machine, measure_model


def judge_spec(ctx: RunContext):
    """The judge as a :class:`~potstill.teachers.spec.ModelSpec` (default: the run's teacher), or None when off."""
    js = ctx.cfg.eval.judge_settings()
    if js is None:
        return None
    if js.model is None:
        return ctx.teacher
    spec = parse_model(js.model, ctx.cfg.resolve, where="eval.judge.model")
    if spec.is_api:  # the teacher's endpoint and key when it is the same provider
        same = ctx.teacher.provider == spec.provider
        spec = replace(
            spec,
            base_url=js.base_url or (ctx.teacher.base_url if same else None),
            api_key_env=js.api_key_env or (ctx.teacher.api_key_env if same else None),
        )
    return spec


def judge_is_on(ctx: RunContext) -> bool:
    """Whether the judge runs: ``eval.judge`` true / settings, or ``auto`` decided by :func:`.judging.auto_judge`."""
    spec = judge_spec(ctx)
    if spec is None:
        return False
    if ctx.cfg.eval.judge != "auto":
        return True
    students = [param_count(ctx.path(f"students/{m}")) for m in ctx.cfg.train.methods]
    on, why = auto_judge(spec.is_api, None if spec.is_api else param_count(spec.model_dir()), students)
    say(f"  {why}")
    return on


def build_judge(ctx: RunContext, work: Path):
    """``(JudgeFn, name)`` for the eval stage; an API judge goes through the teacher's engine and answer cache."""
    cfg, js, spec = ctx.cfg, ctx.cfg.eval.judge_settings(), judge_spec(ctx)
    if spec.is_api:
        tcfg = ctx.teacher_config().model_copy(
            update={
                "model": spec.raw,
                "top_logprobs": 0,
                "do_sample": False,
                "max_new_tokens": js.max_new_tokens,
                "tokenizer": None,
            }
        )
        return api_judge(
            tcfg, work / "judge-api", seed=cfg.seed, prices=ctx.teacher_prices(), cache_path=ctx.api_cache(), spec=spec
        ), spec.display
    dtype = cfg.teacher.dtype if spec is ctx.teacher else "float32"
    return local_judge(
        spec.model_dir(), dtype=dtype, max_new_tokens=js.max_new_tokens, batch_size=js.batch_size, seed=cfg.seed
    ), str(spec.path)


def warn(message: str) -> None:
    """One warning line; the message (split names, record ids, prompt text) is printed as text, not rich markup."""
    say(f"  [yellow]warning[/]: {escape(message)}")


class EvalStage(Stage):
    name = "eval"

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        cfg = ctx.cfg
        inputs = {
            "config": cfg.eval.model_dump(mode="json", exclude={"latency"}, exclude_defaults=True),
            "prompts": ctx.need("prompts"),
            "students": {m: ctx.need(f"students/{m}") for m in cfg.train.methods},
            "teacher": ctx.teacher.identity(),
            "floor": ctx.floor_identity(),
            "seed": cfg.seed,
        }
        inputs.update(ctx.split_inputs(cfg.eval.splits))  # validation_expanded: the expand stage's hash
        spec = judge_spec(ctx)
        if spec is not None and spec is not ctx.teacher:
            inputs["judge"] = spec.identity()
        return inputs

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        cfg = ctx.cfg
        splits = ctx.eval_splits()
        contamination = contamination_report(splits, ctx.train_prompts())
        lines = check_contamination(contamination, cfg.eval.contamination_threshold, cfg.eval.force_contaminated)
        for line in lines:
            warn(f"contamination: {line}")
        answers = {"teacher": api_answers(ctx, splits, work, cfg.eval.max_new_tokens)} if ctx.teacher.is_api else {}
        eval_cfg = cfg.eval
        judge = judge_name = None
        if judge_is_on(ctx):
            judge, judge_name = build_judge(ctx, work)
        elif eval_cfg.judge_settings() is not None:
            eval_cfg = eval_cfg.model_copy(update={"judge": False})
        results = run_eval(
            eval_cfg,
            ctx.models(),
            splits,
            out,
            work,
            cfg.seed,
            answers=answers,
            judge=judge,
            judge_model=judge_name,
            contamination=contamination,
            warnings=lines,
            cache_dir=ctx.run_dir.root / ".cache" / "answers",
        )
        for split, data in results["splits"].items():
            for pair in data["pairs"]:
                say(f"  {escape(pair_line(pair, split))}")  # a line, not markup
        for w in results["warnings"]:
            warn(w["message"])
        return {"splits": list(results["splits"]), "warnings": len(results["warnings"])}


def api_perf(eval_dir: Path) -> dict:
    """An API teacher is not run here: its cost comes from token prices and its measured token counts."""
    rows = [r for f in sorted((eval_dir / "answers").glob("teacher__*.jsonl")) for r in read_jsonl(f)]
    n = max(len(rows), 1)
    return {
        "api": True,
        "params": None,
        "latency_p50_s": None,
        "latency_p95_s": None,
        "latencies_s": [],
        "tokens_per_s": None,
        "peak_rss_mb": None,
        "batched_queries_per_s": None,
        "mean_prompt_tokens": sum(r.get("prompt_tokens", 0) for r in rows) / n,
        "mean_completion_tokens": sum(r.get("completion_tokens", 0) for r in rows) / n,
    }


class MeasureStage(Stage):
    name = "measure"

    def inputs(self, ctx: RunContext, folder: str) -> dict:
        return {
            "latency": ctx.cfg.eval.latency.model_dump(mode="json", exclude_defaults=True),
            "engines": measured_engines(ctx.cfg.eval),
            "max_new_tokens": ctx.cfg.eval.max_new_tokens,
            "eval": ctx.need("eval"),
            "machine": machine(),
        }

    def build(self, ctx: RunContext, folder: str, out: Path, work: Path) -> dict:
        """``perf.json``: ``models`` (each model on ``eval.engine``, what the report prices) and
        ``engines`` (``{engine: {model: perf}}`` on every engine of ``eval.latency.engines``)."""
        cfg = ctx.cfg
        records = next(iter(ctx.eval_splits().values()))
        by_engine: dict[str, dict] = {}
        engines = measured_engines(cfg.eval)
        for engine in engines:
            perf = by_engine[engine] = {}
            for name, spec in ctx.models().items():
                if spec.get("api"):
                    perf[name] = api_perf(ctx.path("eval"))
                    continue
                untrained = spec.get("init", "pretrained") != "pretrained"  # the floor runs on hf only
                if untrained and engine != engines[0]:  # measured once, on the first engine's pass
                    perf[name] = by_engine[engines[0]][name]
                    continue
                say(f"  measuring {name} on {engine}")
                perf[name] = measure_model(
                    spec["path"],
                    init=spec.get("init", "pretrained"),
                    dtype=spec.get("dtype", "float32"),
                    seed=cfg.seed,
                    records=records,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    queries=cfg.eval.latency.queries,
                    batch_size=cfg.eval.latency.batch_size,
                    engine=engine,
                )
        models = by_engine[cfg.eval.engine]
        write_json(
            out / "perf.json", {"machine": machine(), "engine": cfg.eval.engine, "models": models, "engines": by_engine}
        )
        return {"models": list(models), "engines": list(by_engine)}


def measured_engines(eval_cfg) -> list[str]:
    """The engines the measure stage runs every model on: ``eval.latency.engines`` (in its order),
    with ``eval.engine`` first when it is not among them."""
    listed = list(eval_cfg.latency.engines or [])
    return listed if eval_cfg.engine in listed else [eval_cfg.engine, *listed]


EVAL = EvalStage()
MEASURE = MeasureStage()


def read_perf(ctx: RunContext) -> dict:
    return read_json(ctx.path("measure") / "perf.json")["models"]
