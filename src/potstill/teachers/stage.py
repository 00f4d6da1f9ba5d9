"""The generate stage: the teacher answers every training prompt, resumably.

A local teacher (a model directory) generates in batches; an API teacher (``openai:MODEL``,
``anthropic:MODEL``) goes through :func:`potstill.teachers.apistage.run_api_generate`.
For a local teacher, finished batches are appended to ``work_dir/partial.jsonl`` (flushed and fsynced) as they
complete, so a killed run resumes where it stopped; a half-written last line is discarded.
The finished set is written as ``generations.jsonl`` in prompt order, plus ``failed.jsonl``
(rows that could not be answered) and ``stats.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import TeacherConfig
from ..io import write_json, write_jsonl
from ..progress import say, track
from .api import parse_teacher
from .base import GenerationSettings


LOCAL_FIELDS = ("model", "batch_size", "max_new_tokens", "do_sample", "temperature", "top_p", "top_logprobs", "dtype")
RUN_ONLY_FIELDS = {"batch_size", "dtype", "api_key_env", "concurrency", "rpm", "tpm", "timeout_s", "max_attempts",
                   "backoff_base_s", "backoff_max_s", "max_cost", "cache"}


def hashed_teacher_config(cfg: TeacherConfig) -> dict:
    """The teacher settings that decide the answers (the generate stage's config input).

    A local teacher hashes exactly the fields it always had (old run directories stay valid);
    an API teacher leaves out how the answers are fetched (concurrency, limits, retries, key,
    budget, cache), which change no answer.
    """
    if parse_teacher(cfg.model):
        return cfg.model_dump(mode="json", exclude=RUN_ONLY_FIELDS)
    return cfg.model_dump(mode="json", include=set(LOCAL_FIELDS))


def settings_from(cfg: TeacherConfig, seed: int) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
        top_p=cfg.top_p, top_logprobs=cfg.top_logprobs, batch_size=cfg.batch_size, seed=seed,
    )


def read_partial(path: Path) -> dict[str, dict]:
    """Records already generated; a torn last line (killed mid-write) is ignored."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["id"]] = rec
    return done


def run_generate(cfg: TeacherConfig, teacher_dir: Path | None, records: list[dict], out_dir: Path,
                 work_dir: Path, seed: int = 0, prices: tuple[float | None, float | None] = (None, None),
                 cache_path: Path | None = None) -> dict:
    """Answer ``records`` with the teacher; returns the stats written to ``stats.json``.

    ``teacher_dir`` is the local model directory (None for an API teacher); ``prices`` are the
    API's USD per million input/output tokens and ``cache_path`` its answer cache (API only).
    """
    if parse_teacher(cfg.model):
        from .apistage import run_api_generate

        return run_api_generate(cfg, records, out_dir, seed=seed, prices=prices,
                                cache_path=cache_path or Path(work_dir) / "cache.sqlite")
    from .hf import LocalGenerator

    partial = work_dir / "partial.jsonl"
    done = read_partial(partial)
    todo = [r for r in records if r["id"] not in done]
    if done:
        say(f"  resuming: {len(done)} of {len(records)} answers already generated")
    started = time.perf_counter()
    if todo:
        gen = LocalGenerator(teacher_dir, dtype=cfg.dtype, seed=seed)
        settings = settings_from(cfg, seed)
        with open(partial, "a", encoding="utf-8") as f, track(len(todo), "generate") as bar:
            def flush(batch: list[dict]) -> None:
                for rec in batch:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.advance(len(batch), tokens=sum(r["usage"]["completion_tokens"] for r in batch))

            for rec in gen.generate(todo, settings, on_batch=flush):
                done[rec["id"]] = rec
    elapsed = time.perf_counter() - started
    rows = [done[r["id"]] for r in records if r["id"] in done]
    write_jsonl(out_dir / "generations.jsonl", rows)
    write_jsonl(out_dir / "failed.jsonl", [])
    n_len = sum(r["finish_reason"] == "length" for r in rows)
    if n_len:
        say(f"  [yellow]warning[/]: {n_len} of {len(rows)} answers hit max_new_tokens (finish_reason=length)")
    stats = {
        "answered": len(rows),
        "failed": 0,
        "finish_length": n_len,
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in rows),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in rows),
        "generation_seconds": round(elapsed, 3),
    }
    write_json(out_dir / "stats.json", stats)
    return stats
