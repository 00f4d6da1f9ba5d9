"""The eval stage: the teacher, each student and the untrained floor answer the held-out splits.

Every model answers every split (greedy); answers are kept per model and split under the
stage's work folder so a killed evaluation resumes. Scores: the task's own scorer, plus ROUGE-L
against the teacher's answer (agreement with the teacher). Per split: each model's mean score,
student as % of teacher, and gap recovered = (student - floor) / (teacher - floor).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from statistics import mean

from ..config import EvalConfig, ScorerSpec
from ..io import read_jsonl, write_json, write_jsonl
from ..progress import track
from ..teachers.base import GenerationSettings
from ..teachers.hf import LocalGenerator
from .scorers import build_scorer, scorer_name


def answer_split(gen: LocalGenerator, records: list[dict], settings: GenerationSettings, path: Path, label: str) -> list[dict]:
    """Answers of one model on one split, cached in ``path`` once complete."""
    if path.exists():
        rows = read_jsonl(path)
        if len(rows) == len(records):
            return rows
    by_id = {}
    with track(len(records), label) as bar:
        for rec in gen.generate(records, settings):
            by_id[rec["id"]] = {"id": rec["id"], "text": rec["text"], "finish_reason": rec["finish_reason"],
                                "prompt_tokens": rec["usage"]["prompt_tokens"],
                                "completion_tokens": rec["usage"]["completion_tokens"]}
            bar.advance(1, tokens=rec["usage"]["completion_tokens"])
    rows = [by_id[r["id"]] for r in records]
    write_jsonl(path, rows)
    return rows


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summarize(scores: dict[str, list[float]], roles: dict[str, str], records: list[dict],
              rouge: dict[str, list[float]]) -> dict:
    """Per-model mean score, % of teacher, gap recovered, ROUGE-L and per-category means."""
    teacher = next(n for n, r in roles.items() if r == "teacher")
    floor = next((n for n, r in roles.items() if r == "floor"), None)
    means = {n: mean(s) if s else 0.0 for n, s in scores.items()}
    out = {}
    cats = [r.get("category") for r in records]
    for name, values in scores.items():
        per_cat: dict[str, list[float]] = {}
        for c, v in zip(cats, values):
            if c is not None:
                per_cat.setdefault(str(c), []).append(v)
        pct = ratio(means[name], means[teacher])
        gap = ratio(means[name] - means[floor], means[teacher] - means[floor]) if floor else None
        out[name] = {
            "score": round(means[name], 6),
            "pct_of_teacher": round(100 * pct, 3) if pct is not None else None,
            "gap_recovered": round(gap, 6) if gap is not None else None,
            "rouge_l": round(mean(rouge[name]), 6) if rouge[name] else None,
            "per_category": {c: round(mean(v), 6) for c, v in sorted(per_cat.items())},
        }
    return out


def run_eval(cfg: EvalConfig, models: dict[str, dict], splits: dict[str, list[dict]], out_dir: Path,
             work_dir: Path, seed: int = 0, answers: dict[str, dict[str, list[dict]]] | None = None) -> dict:
    """Evaluate ``models`` ({name: {path, role, method, init, dtype}}, teacher first) on ``splits``.

    ``answers`` holds answers produced elsewhere ({model: {split: rows}}, e.g. an API teacher's);
    those models are not loaded.
    """
    score = build_scorer(cfg.scorer)
    rouge = build_scorer(ScorerSpec(type="rouge_l", field="__teacher__"))
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed)
    answers = dict(answers or {})
    results = {"scorer": scorer_name(cfg.scorer), "models": {}, "splits": {}}
    for name, spec in models.items():
        if name in answers:
            results["models"][name] = {"role": spec["role"], "method": spec.get("method"), "path": str(spec["path"]),
                                       "params": None}
            continue
        gen = LocalGenerator(spec["path"], dtype=spec.get("dtype", "float32"), init=spec.get("init", "pretrained"), seed=seed)
        results["models"][name] = {"role": spec["role"], "method": spec.get("method"), "path": str(spec["path"]),
                                   "params": gen.params}
        answers[name] = {}
        for split, records in splits.items():
            answers[name][split] = answer_split(gen, records, settings, work_dir / f"{name}__{split}.jsonl", f"eval {name}/{split}")
        del gen
    roles = {n: m["role"] for n, m in results["models"].items()}
    teacher = next(n for n, r in roles.items() if r == "teacher")
    for split, records in splits.items():
        refs = [a["text"] for a in answers[teacher][split]]
        scores, rouges = {}, {}
        for name in models:
            texts = [a["text"] for a in answers[name][split]]
            scores[name] = [score(t, r, ref) for t, r, ref in zip(texts, records, refs)]
            rouges[name] = [rouge(t, r, ref) for t, r, ref in zip(texts, records, refs)]
            rows = [{**a, "score": s, "rouge_l": rl} for a, s, rl in zip(answers[name][split], scores[name], rouges[name])]
            write_jsonl(out_dir / "answers" / f"{name}__{split}.jsonl", rows)
        results["splits"][split] = {"n": len(records), "models": summarize(scores, roles, records, rouges)}
    write_json(out_dir / "results.json", results)
    shutil.rmtree(work_dir, ignore_errors=True)
    return results
