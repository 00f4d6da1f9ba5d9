"""Teacher vs students on the held-out splits (the eval stage's work): answers, scores, statistics.

Every model answers every split (greedy, batched); answers are kept per model and split under the
stage's work folder so a killed evaluation resumes. Per model and split (``results.json``):

* the task's own (primary) scorer: mean ``score``, ``ci95`` (paired bootstrap), student as
  ``pct_of_teacher`` and ``gap_recovered`` = (student - floor) / (teacher - floor), each with an
  interval, ``diff_vs_teacher`` with ``diff_ci95``, and McNemar's test against the teacher when the
  scores are binary (``mcnemar_p`` exact, ``mcnemar_midp``); per category: mean, n and interval;
* agreement with the teacher's answer: ``rouge_l``, ``chrf`` and ``agreement`` (normalized match);
  extra configured scorers under ``scorers``;
* degeneration: ``repetition`` (share of repeated word 3-grams), ``length_ratio`` (words vs the
  teacher's), ``finish_length_rate``, ``empty_rate``, ``mean_words``;
* teacher-forced on the teacher's held-out answers: ``top1_agreement``, ``kl`` (KL(teacher||student));
* ``judge``: win / tie / loss against the teacher from a pairwise LLM judge, with its parse rates.

Per split, ``pairs`` compares the students with each other (:func:`student_pairs`): one entry per
pair, oriented later method minus earlier in ``train.methods`` (``{"a": "kd", "b": "sft", ...}`` is
kd - sft), with the score difference and the difference in points of % of teacher, each with its
paired interval, the verdict ``better`` and the same per category.

Top level: ``warnings`` (OOD retention more than 10 points below ID retention, a judge that rarely
states a verdict, forced contamination), ``notes`` (measures that could not be computed and why),
``contamination``, ``judge`` and ``bootstrap`` settings. See :mod:`.stats`, :mod:`.judge`,
:mod:`.teacher_forced`, :mod:`.degeneration`, :mod:`.contamination`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from statistics import mean

from ..config import EvalConfig, ScorerSpec
from ..data.config import EXPANDED_VALIDATION
from ..engines import make_generator
from ..io import read_json, read_jsonl, sha256_json, write_json, write_jsonl
from ..progress import say, track
from ..teachers.base import GenerationSettings, PromptGenerator
from .degeneration import degeneration_summary
from .judge import TEMPLATE
from .judging import default_judge, run_judge
from .scorers import build_scorer, scorer_name
from .stats import bootstrap_ci, is_binary, mcnemar, paired_bootstrap, paired_difference, rounded
from .teacher_forced import run_teacher_forced

OOD_RETENTION_POINTS = 10.0  # warn when OOD % of teacher is more than this many points below ID
JUDGE_PARSE_WARN = 0.5  # warn when the judge stated a verdict in fewer than this share of replies
IN_DISTRIBUTION = ("test", "validation", EXPANDED_VALIDATION)  # the ID splits, in the order preferred as reference


def answers_path(
    root: Path, name: str, spec: dict, split: str, records: list[dict], settings: GenerationSettings, engine: str
) -> Path:
    """Where one model's answers on one split are kept: keyed by the model's identity (weights hash;
    the name when none is given), the split's prompts, the engine and the generation settings, and by
    nothing else, so a change of scorer, judge or bootstrap reuses them."""
    key = sha256_json(
        {
            "model": spec.get("identity") or [name, str(spec["path"])],
            "engine": engine,
            "dtype": spec.get("dtype", "float32"),
            "init": spec.get("init", "pretrained"),
            "prompts": sha256_json([[r["id"], r["messages"]] for r in records]),
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
        }
    )
    return Path(root) / f"{name}__{split}__{key[:16]}.jsonl"


def cached_answers(path: Path, records: list[dict]) -> list[dict] | None:
    """The answers in ``path`` when it holds one per record, in order; else None."""
    if not path.exists():
        return None
    rows = read_jsonl(path)
    return rows if [r["id"] for r in rows] == [r["id"] for r in records] else None


def params_path(root: Path, name: str, spec: dict) -> Path:
    """Where a model's parameter count is kept beside its cached answers (a fully cached model is never loaded)."""
    key = sha256_json(
        {"model": spec.get("identity") or [name, str(spec["path"])], "init": spec.get("init", "pretrained")}
    )
    return Path(root) / f"{name}__{key[:16]}.params.json"


def answer_split(
    gen: PromptGenerator, records: list[dict], settings: GenerationSettings, path: Path, label: str
) -> list[dict]:
    """Answers of one model on one split, cached in ``path`` once complete."""
    rows = cached_answers(path, records)
    if rows is not None:
        return rows
    by_id = {}
    with track(len(records), label) as bar:
        for rec in gen.generate(records, settings):
            by_id[rec["id"]] = {
                "id": rec["id"],
                "text": rec["text"],
                "finish_reason": rec["finish_reason"],
                "prompt_tokens": rec["usage"]["prompt_tokens"],
                "completion_tokens": rec["usage"]["completion_tokens"],
            }
            bar.advance(1, tokens=rec["usage"]["completion_tokens"])
    rows = [by_id[r["id"]] for r in records]
    write_jsonl(path, rows)
    return rows


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _sig(x, digits: int = 6):
    """``x`` to ``digits`` significant digits (p-values can be tiny); None stays None."""
    return float(f"{x:.{digits}g}") if isinstance(x, (int, float)) else None


def summarize(
    scores: dict[str, list[float]],
    roles: dict[str, str],
    records: list[dict],
    rouge: dict[str, list[float]],
    *,
    samples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Per model: mean score, % of teacher, gap recovered, ROUGE-L, per-category means, and the statistics.

    Statistics (paired over the prompts, see :mod:`.stats`): ``ci95`` of the score,
    ``diff_vs_teacher`` and ``diff_ci95``, ``pct_of_teacher_ci95``, ``gap_recovered_ci95``,
    ``binary``, ``mcnemar_p`` / ``mcnemar_midp`` / ``mcnemar_discordant`` against the teacher (binary
    scores only), and ``per_category_n`` / ``per_category_ci95``.
    """
    teacher = next(n for n, r in roles.items() if r == "teacher")
    floor = next((n for n, r in roles.items() if r == "floor"), None)
    floor = floor if floor in scores else None
    means = {n: mean(s) if s else 0.0 for n, s in scores.items()}
    boot = paired_bootstrap(scores, teacher, floor, samples=samples, seed=seed)
    binary = {n: is_binary(s) for n, s in scores.items()}
    out = {}
    cats = [r.get("category") for r in records]
    for name, values in scores.items():
        per_cat: dict[str, list[float]] = {}
        for c, v in zip(cats, values):
            if c is not None:
                per_cat.setdefault(str(c), []).append(v)
        pct = ratio(means[name], means[teacher])
        gap = ratio(means[name] - means[floor], means[teacher] - means[floor]) if floor else None
        b = boot[name]
        test = None
        if name != teacher and binary[name] and binary[teacher]:
            test = mcnemar(values, scores[teacher])
        cat_ci = {}
        for i, (c, v) in enumerate(sorted(per_cat.items())):
            cat_ci[c] = rounded(paired_bootstrap({"x": v}, "x", samples=samples, seed=seed + 1 + i)["x"]["score"])
        out[name] = {
            "score": round(means[name], 6),
            "pct_of_teacher": round(100 * pct, 3) if pct is not None else None,
            "gap_recovered": round(gap, 6) if gap is not None else None,
            "rouge_l": round(mean(rouge[name]), 6) if rouge[name] else None,
            "per_category": {c: round(mean(v), 6) for c, v in sorted(per_cat.items())},
            "n": len(values),
            "ci95": rounded(b["score"]),
            "diff_vs_teacher": round(means[name] - means[teacher], 6),
            "diff_ci95": rounded(b["diff_vs_teacher"]),
            "pct_of_teacher_ci95": rounded(b["pct_of_teacher"], 3),
            "gap_recovered_ci95": rounded(b["gap_recovered"]),
            "binary": binary[name],
            "mcnemar_p": _sig(test and test["p_exact"]),
            "mcnemar_midp": _sig(test and test["p_midp"]),
            "mcnemar_discordant": test["discordant"] if test else None,
            "per_category_n": {c: len(v) for c, v in sorted(per_cat.items())},
            "per_category_ci95": cat_ci,
        }
    return out


def _difference(a: list[float], b: list[float], teacher: list[float], samples: int, seed: int) -> dict:
    """``a - b`` as a score difference and in points of % of teacher, each with its paired interval."""
    d = mean(a) - mean(b) if a else None
    t = mean(teacher) if teacher else 0.0
    ci = paired_difference(a, b, teacher, samples=samples, seed=seed)
    return {
        "n": len(a),
        "diff": round(d, 6) if d is not None else None,
        "diff_ci95": rounded(ci["diff"]),
        "pct_points": round(100 * d / t, 3) if d is not None and t else None,
        "pct_points_ci95": rounded(ci["pct_points"], 3),
    }


def _better(d: dict, a: str, b: str) -> str | None:
    """``a`` or ``b`` when the interval of ``a - b`` excludes 0, else None (no clear difference)."""
    ci = d["diff_ci95"]
    if not ci or None in ci:
        return None
    return a if ci[0] > 0 else b if ci[1] < 0 else None


def student_pairs(
    scores: dict[str, list[float]],
    roles: dict[str, str],
    records: list[dict],
    *,
    samples: int = 10_000,
    seed: int = 0,
) -> list[dict]:
    """Every pair of students compared on one split, oriented later method minus earlier (``kd - sft``).

    Students come in the order of ``roles`` (the order of ``train.methods``); for each ``i < j`` the
    entry is ``a = students[j]``, ``b = students[i]``: ``diff`` = mean(a) - mean(b) with ``diff_ci95``,
    ``pct_points`` = 100 * (mean(a) - mean(b)) / mean(teacher), i.e. pct_of_teacher(a) -
    pct_of_teacher(b), with ``pct_points_ci95`` (None when the teacher's mean is 0), ``better``: the
    student whose side of 0 the whole ``diff_ci95`` lies on, else None (no clear difference), and the
    same per category (``per_category``). Paired bootstrap over the prompts with ``seed`` (the
    resamples of :func:`summarize`'s intervals) and ``seed + 1 + i`` for the i-th category in sorted
    order, as there. Empty with fewer than two students.
    """
    teacher = next(n for n, r in roles.items() if r == "teacher")
    students = [n for n, r in roles.items() if r == "student" and n in scores]
    cats = [r.get("category") for r in records]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cats):
        if c is not None:
            groups.setdefault(str(c), []).append(i)
    out = []
    for i, b in enumerate(students):
        for a in students[i + 1 :]:
            entry = {"a": a, "b": b, **_difference(scores[a], scores[b], scores[teacher], samples, seed)}
            entry["better"] = _better(entry, a, b)
            per_cat = {}
            for k, (c, idx) in enumerate(sorted(groups.items())):
                pick = [[s[j] for j in idx] for s in (scores[a], scores[b], scores[teacher])]
                per_cat[c] = _difference(*pick, samples, seed + 1 + k)
                per_cat[c]["better"] = _better(per_cat[c], a, b)
            entry["per_category"] = per_cat
            out.append(entry)
    return out


def retention_warnings(split_results: dict[str, dict], roles: dict[str, str]) -> list[dict]:
    """A warning per student and off-distribution split whose % of teacher is more than 10 points below
    its ID % of teacher.

    The ID split is ``test`` (else ``validation``, else ``validation_expanded``). Off-distribution:
    ``ood`` and every named eval set (``prompts.eval_sets``: handwritten questions, production logs):
    a set written apart from the training sources is, like ``ood``, where a student that only learned
    the training phrasing falls behind, so a big drop there is worth a warning too.
    ``validation_expanded`` is in-distribution: the validation questions (a share of the training
    sources) rewritten by the same rules that expand the training prompts, it is a set to choose
    settings on, like ``validation``, not a measure of how the student fares on other sources.
    """
    id_split = next((s for s in IN_DISTRIBUTION if s in split_results), None)
    off = [s for s in split_results if s not in ("train", *IN_DISTRIBUTION)]
    if id_split is None:
        return []
    out = []
    for off_split in off:
        label = "OOD" if off_split == "ood" else f"'{off_split}'"
        for name, role in roles.items():
            if role != "student":
                continue
            a = split_results[id_split]["models"].get(name, {}).get("pct_of_teacher")
            b = split_results[off_split]["models"].get(name, {}).get("pct_of_teacher")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a - b > OOD_RETENTION_POINTS:
                out.append(
                    {
                        "kind": "ood_retention",
                        "model": name,
                        "id_split": id_split,
                        "ood_split": off_split,
                        "id_pct_of_teacher": a,
                        "ood_pct_of_teacher": b,
                        "points": round(a - b, 3),
                        "message": f"{name}: {label} retention {b:.1f}% of the teacher is {a - b:.1f} points below "
                        f"its {id_split} retention {a:.1f}% (more than {OOD_RETENTION_POINTS:.0f} points): "
                        "the student holds up worse off-distribution than the ID numbers suggest",
                    }
                )
    return out


def run_eval(
    cfg: EvalConfig,
    models: dict[str, dict],
    splits: dict[str, list[dict]],
    out_dir: Path,
    work_dir: Path,
    seed: int = 0,
    answers: dict[str, dict[str, list[dict]]] | None = None,
    judge=None,
    judge_model: str | None = None,
    contamination: dict | None = None,
    warnings: list | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Evaluate ``models`` ({name: {path, role, method, init, dtype}}, teacher first) on ``splits``.

    ``answers`` holds answers produced elsewhere ({model: {split: rows}}, e.g. an API teacher's);
    those models are not loaded. ``judge`` is a :data:`~potstill.evaluate.judge.JudgeFn` (named
    ``judge_model``); without one and with ``cfg.judge`` on, the run's local teacher judges (an API
    judge must be passed in: :mod:`potstill.evaluate.stage` builds it).
    ``contamination`` (a :func:`~.contamination.contamination_report`) and ``warnings`` (strings)
    are stored in ``results.json`` as given. ``cache_dir`` keeps the answers across runs of the stage
    (:func:`answers_path`; default: ``work_dir``, removed when done); a model whose answers are all
    there is not loaded.
    """
    score = build_scorer(cfg.scorer)
    rouge = build_scorer(ScorerSpec(type="rouge_l", field="__teacher__"))
    chrf = build_scorer(ScorerSpec(type="chrf", field="__teacher__"))
    agree = build_scorer(ScorerSpec(type="agreement"))
    extra = {scorer_name(s): build_scorer(s) for s in cfg.scorers}
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed)
    answers = dict(answers or {})
    results = {
        "scorer": scorer_name(cfg.scorer),
        "engine": cfg.engine,
        "models": {},
        "splits": {},
        "warnings": [{"kind": "contamination", "message": w} for w in (warnings or [])],
        "notes": [],
        "contamination": contamination,
        "bootstrap": {"samples": cfg.bootstrap_samples, "seed": seed, "level": 0.95, "method": "paired percentile"},
        "judge": None,
    }
    for name, spec in models.items():
        if name in answers:
            results["models"][name] = {
                "role": spec["role"],
                "method": spec.get("method"),
                "path": str(spec["path"]),
                "params": None,
                "eval_seconds": None,
            }
            continue
        paths = {
            split: answers_path(cache_dir or work_dir, name, spec, split, records, settings, cfg.engine)
            for split, records in splits.items()
        }
        answers[name], gen, started = {}, None, time.perf_counter()
        for split, records in splits.items():
            rows = cached_answers(paths[split], records)
            if rows is None:
                gen = gen or make_generator(
                    cfg.engine,
                    spec["path"],
                    dtype=spec.get("dtype", "float32"),
                    init=spec.get("init", "pretrained"),
                    seed=seed,
                )
                rows = answer_split(gen, records, settings, paths[split], f"eval {name}/{split}")
            answers[name][split] = rows
        p_file = params_path(cache_dir or work_dir, name, spec)
        params = gen.params if gen is not None else (read_json(p_file) if p_file.exists() else {}).get("params")
        write_json(p_file, {"params": params})
        results["models"][name] = {
            "role": spec["role"],
            "method": spec.get("method"),
            "path": str(spec["path"]),
            "params": params,
            "engine": cfg.engine if spec.get("init", "pretrained") == "pretrained" else "hf",
            "eval_seconds": round(time.perf_counter() - started, 3),
            "answers_cached": gen is None,
        }
        del gen
    roles = {n: m["role"] for n, m in results["models"].items()}
    teacher = next(n for n, r in roles.items() if r == "teacher")

    all_scores: dict[str, dict[str, list[float]]] = {}
    per_item: dict[str, dict[str, dict[str, list[float]]]] = {}
    for split, records in splits.items():
        refs = [a["text"] for a in answers[teacher][split]]
        all_scores[split], per_item[split] = {}, {}
        for name in models:
            texts = [a["text"] for a in answers[name][split]]
            all_scores[split][name] = [score(t, r, ref) for t, r, ref in zip(texts, records, refs)]
            items = {
                "rouge_l": [rouge(t, r, ref) for t, r, ref in zip(texts, records, refs)],
                "chrf": [chrf(t, r, ref) for t, r, ref in zip(texts, records, refs)],
                "agreement": [agree(t, r, ref) for t, r, ref in zip(texts, records, refs)],
            }
            for sname, fn in extra.items():
                items[f"scorer:{sname}"] = [fn(t, r, ref) for t, r, ref in zip(texts, records, refs)]
            per_item[split][name] = items

    tf: dict[str, dict[str, dict]] = {}
    if cfg.teacher_forced:
        say("  teacher-forced measures (top-1 agreement, KL) on the teacher's answers")
        tf, tf_notes = run_teacher_forced(
            models, splits, {s: answers[teacher][s] for s in splits}, batch_size=cfg.batch_size, seed=seed
        )
        results["notes"] += tf_notes

    judged: dict[str, dict[str, dict]] = {}
    jset = cfg.judge_settings()
    if jset is not None:
        if judge is None:
            judge, judge_model = default_judge(cfg, models, seed)
        if judge is None:
            results["notes"].append(f"judge {judge_model}: an API judge is built by the pipeline; not run here")
        else:
            judged = run_judge(cfg, judge, roles, splits, answers, all_scores, out_dir, work_dir, seed)
            results["judge"] = {
                "model": judge_model,
                "fallback": jset.fallback,
                "max_examples": jset.max_examples,
                "max_new_tokens": jset.max_new_tokens,
                "template": TEMPLATE,
                "combine": "both orders agree -> that verdict; disagree -> tie; one order only -> it",
            }
            if hasattr(judge, "close"):
                judge.close()

    for split, records in splits.items():
        summary = summarize(
            all_scores[split],
            roles,
            records,
            {n: per_item[split][n]["rouge_l"] for n in models},
            samples=cfg.bootstrap_samples,
            seed=seed,
        )
        for name in models:
            m, items = summary[name], per_item[split][name]
            m["chrf"] = round(mean(items["chrf"]), 6) if items["chrf"] else None
            m["agreement"] = round(mean(items["agreement"]), 6) if items["agreement"] else None
            if extra:
                m["scorers"] = {
                    s: {
                        "score": round(mean(items[f"scorer:{s}"]), 6) if records else None,
                        "ci95": rounded(bootstrap_ci(items[f"scorer:{s}"], cfg.bootstrap_samples, seed)),
                    }
                    for s in extra
                }
            m.update(degeneration_summary(answers[name][split], answers[teacher][split]))
            t = (tf.get(split) or {}).get(name)
            m["top1_agreement"] = t["top1_agreement"] if t else None
            m["kl"] = t["kl"] if t else None
            m["judge"] = (judged.get(split) or {}).get(name)
            rows = [
                {**a, "score": s, "rouge_l": rl, "chrf": round(c, 6), "agreement": ag}
                for a, s, rl, c, ag in zip(
                    answers[name][split], all_scores[split][name], items["rouge_l"], items["chrf"], items["agreement"]
                )
            ]
            write_jsonl(out_dir / "answers" / f"{name}__{split}.jsonl", rows)
        pairs = student_pairs(all_scores[split], roles, records, samples=cfg.bootstrap_samples, seed=seed)
        results["splits"][split] = {"n": len(records), "models": summary, "pairs": pairs}

    results["warnings"] += retention_warnings(results["splits"], roles)
    summaries = [j for by_model in judged.values() for j in by_model.values()]
    replies = sum(j["replies"] for j in summaries)
    if replies:

        def share(key: str) -> float:
            return sum((j[key] or 0) * j["replies"] for j in summaries) / replies

        agree_n = sum(j["scorer_agreement_n"] for j in summaries)
        agree = (
            sum((j["scorer_agreement"] or 0) * j["scorer_agreement_n"] for j in summaries) / agree_n
            if agree_n
            else None
        )
        results["judge"]["parse_rate"] = round(share("parse_rate"), 6)
        results["judge"]["fallback_rate"] = round(share("fallback_rate"), 6)
        results["judge"]["unparsed_rate"] = round(share("unparsed_rate"), 6)
        results["judge"]["scorer_agreement"] = round(agree, 6) if agree is not None else None
        results["judge"]["replies"] = replies
        if share("parse_rate") < JUDGE_PARSE_WARN:
            results["warnings"].append(
                {
                    "kind": "judge_reliability",
                    "model": None,
                    "message": f"judge {judge_model}: a verdict was stated in {100 * share('parse_rate'):.0f}% of "
                    f"its {replies} "
                    f"replies; {100 * share('fallback_rate'):.0f}% were decided by the similarity fallback and "
                    f"{100 * share('unparsed_rate'):.0f}% stayed unparsed; where the task scorer separates the two "
                    f"answers it agrees with the scorer {_pct(agree)} of the time ({agree_n} prompts): treat the "
                    "judge's win rates as weak evidence",
                }
            )
    write_json(out_dir / "results.json", results)
    shutil.rmtree(work_dir, ignore_errors=True)
    return results


def _pct(x) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "n/a"
