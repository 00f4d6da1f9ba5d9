"""Running the pairwise LLM judge over the evaluation answers, and deciding whether it is worth running.

``eval.judge: auto`` (the default) judges when the judge is an API model or a local model at least
:data:`AUTO_MIN_RATIO` times larger than the students: a judge about the students' size cannot
tell their answers apart (on the helpdesk demo a 4.5M-parameter judge stated a verdict in 0% of its
replies), and a local judge costs two generations per judged answer.
"""

from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from ..data.load import user_text
from ..io import read_jsonl, write_jsonl
from ..progress import say
from ..teachers.spec import parse_model
from .judge import judge_pairs, judge_summary, local_judge

AUTO_MIN_RATIO = 10.0


def auto_judge(judge_is_api: bool, judge_params: int | None, student_params: list[int]) -> tuple[bool, str]:
    """``(on, why)`` for ``eval.judge: auto``: on for an API judge, or a local judge at least
    :data:`AUTO_MIN_RATIO` x the largest student's parameters."""
    if judge_is_api:
        return True, "eval.judge auto: on (an API judge)"
    biggest = max(student_params or [0])
    if judge_params and biggest and judge_params >= AUTO_MIN_RATIO * biggest:
        return True, f"eval.judge auto: on (the judge has {judge_params / biggest:.0f}x the students' parameters)"
    ratio = f"{judge_params / biggest:.1f}x" if judge_params and biggest else "an unknown multiple of"
    return False, (
        f"eval.judge auto: off (the local judge has {ratio} the students' parameters, under "
        f"{AUTO_MIN_RATIO:.0f}x: too small to judge them; set eval.judge: true to run it anyway)"
    )


def default_judge(cfg: EvalConfig, models: dict[str, dict], seed: int):
    """The default judge: ``eval.judge.model`` when it is a local directory (relative to the working directory),
    else the run's local teacher; ``(None, name)`` for an API judge, which the caller must build."""
    settings = cfg.judge_settings()
    teacher = next(s for s in models.values() if s["role"] == "teacher")
    if settings.model is not None:
        if parse_model(settings.model, where="eval.judge.model").is_api:
            return None, settings.model
        return local_judge(
            settings.model, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, seed=seed
        ), str(settings.model)
    if teacher.get("api"):
        return None, str(teacher["path"])
    return local_judge(
        teacher["path"],
        dtype=teacher.get("dtype", "float32"),
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        seed=seed,
    ), str(teacher["path"])


def run_judge(
    cfg: EvalConfig,
    judge,
    roles: dict[str, str],
    splits: dict[str, list[dict]],
    answers: dict,
    scores: dict[str, dict[str, list[float]]],
    out_dir: Path,
    work_dir: Path,
    seed: int,
) -> dict[str, dict[str, dict]]:
    """Judge each student (and the floor) against the teacher on every split; ``{split: {model: summary}}``."""
    settings = cfg.judge_settings()
    teacher = next(n for n, r in roles.items() if r == "teacher")
    who = [n for n, r in roles.items() if r == "student" or (r == "floor" and settings.include_floor)]
    out: dict[str, dict[str, dict]] = {}
    for split, records in splits.items():
        n = len(records)
        k = min(n, settings.max_examples or n)
        idx = [i * n // k for i in range(k)]  # evenly spaced through the split (all of it when k == n)
        recs = [records[i] for i in idx]
        out[split] = {}
        for name in who:
            cache = work_dir / f"judge__{name}__{split}.jsonl"
            rows = read_jsonl(cache) if cache.exists() else []
            if len(rows) != k:
                say(f"  judging {name} vs {teacher} on {split} ({k} prompts, both orders)")
                rows = judge_pairs(
                    judge,
                    [user_text(r) for r in recs],
                    [answers[name][split][i]["text"] for i in idx],
                    [answers[teacher][split][i]["text"] for i in idx],
                    ids=[r["id"] for r in recs],
                    fallback=settings.fallback,
                )
                write_jsonl(cache, rows)
            write_jsonl(out_dir / "judge" / f"{name}__{split}.jsonl", rows)
            out[split][name] = judge_summary(
                rows,
                [scores[split][name][i] for i in idx],
                [scores[split][teacher][i] for i in idx],
                samples=cfg.bootstrap_samples,
                seed=seed,
            )
    return out
