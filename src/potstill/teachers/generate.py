"""Teacher answers for a list of prompt records, resumably (the generate stage's work).

A local teacher (a model directory, or ``vllm:DIR``: the same directory run by vLLM, see
:mod:`potstill.teachers.vllm`) generates in batches; an API teacher (``openai:MODEL``,
``anthropic:MODEL``) goes through :func:`potstill.teachers.apistage.run_api_generate`.
For a local teacher, finished batches are appended to ``work_dir/partial.jsonl`` (flushed and fsynced) as they
complete, so a killed run resumes where it stopped; a half-written last line is discarded.
The finished set is written as ``generations.jsonl`` in prompt order, plus ``failed.jsonl``
(rows that could not be answered) and ``stats.json`` (``"failed"``: their count). More failures
than ``teacher.max_failed_share`` of the prompts stop the stage (:func:`check_failed_share`).

Data-parallel sharding (:func:`run_generate_shard`, ``potstill generate CONFIG --shard I/N``):
process ``I`` of ``N`` answers the records whose :func:`shard_of` is ``I`` into
``work_dir/shard-I-of-N.jsonl`` (appended per batch, resumable like ``partial.jsonl``), on any
machine that shares the run directory. A later :func:`run_generate` takes every shard part in
``work_dir`` as already generated, answers only what is missing, and writes the stage. Greedy
answers do not depend on the split (up to batch-shape numerics); sampled answers of the
transformers backend do (its random stream follows the batches).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..config import TeacherConfig
from ..errors import UserError
from ..io import read_jsonl, write_json, write_jsonl
from ..progress import say, track
from .apistage import run_api_generate
from .base import GenerationSettings
from .spec import ModelSpec

LOCAL_FIELDS = (
    "model",
    "batch_size",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_logprobs",
    "dtype",
    "engine",
)
RUN_ONLY_FIELDS = {
    "batch_size",
    "dtype",
    "api_key_env",
    "concurrency",
    "rpm",
    "tpm",
    "timeout_s",
    "max_attempts",
    "backoff_base_s",
    "backoff_max_s",
    "max_cost",
    "cache",
    "max_failed_share",
}


def hashed_teacher_config(cfg: TeacherConfig, spec: ModelSpec) -> dict:
    """The teacher settings that decide the answers (the generate stage's config input).

    A local teacher hashes its generation settings (a ``vllm:DIR`` teacher's engine settings change
    no answer); an API teacher leaves out how the answers are fetched (concurrency, limits,
    retries, key, budget, cache), which change no answer. Only values set away from their
    defaults count, so a setting added to potstill with a default changes no hash; the model
    itself is hashed by its identity (:meth:`ModelSpec.identity`), not by how it was written.
    """
    if spec.is_api:
        return cfg.model_dump(mode="json", exclude=RUN_ONLY_FIELDS | {"model"}, exclude_defaults=True)
    return cfg.model_dump(mode="json", include=set(LOCAL_FIELDS) - {"model"}, exclude_defaults=True)


def settings_from(cfg: TeacherConfig, seed: int) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_logprobs=cfg.top_logprobs,
        batch_size=cfg.batch_size,
        seed=seed,
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


def shard_of(record_id: str, n: int) -> int:
    """The shard (``0 .. n-1``) that answers a record: sha256 of its id mod ``n`` (the same on every machine)."""
    return int(hashlib.sha256(str(record_id).encode("utf-8")).hexdigest()[:16], 16) % n


def shard_path(work_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(work_dir) / f"shard-{shard[0]}-of-{shard[1]}.jsonl"


def parse_shard(text: str, what: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a one-line :class:`UserError` naming ``what`` otherwise."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"{what} expects I/N, e.g. 0/4 (got {text!r})") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"{what} I/N needs 0 <= I < N (got {text!r})")
    return i, n


def _vllm_generator(cfg: TeacherConfig, spec: ModelSpec, seed: int):
    from .vllm import VLLMGenerator  # defers vllm (optional, CUDA)

    return VLLMGenerator(spec.model_dir(), cfg.vllm, seed=seed, dtype=cfg.dtype, max_logprobs=cfg.top_logprobs)


def _engine_generator(cfg: TeacherConfig, spec: ModelSpec, seed: int):
    from ..engines import make_generator  # defers torch/transformers/ctranslate2

    return make_generator(cfg.engine, spec.model_dir(), dtype=cfg.dtype, seed=seed)


# How each kind of local model spec (potstill.teachers.spec.KINDS) generates; others use teacher.engine.
GENERATORS = {"vllm": _vllm_generator}


def local_generator(cfg: TeacherConfig, spec: ModelSpec, seed: int):
    """The generator of a local teacher: its kind's entry in :data:`GENERATORS`, else ``teacher.engine``
    (:func:`potstill.engines.make_generator`)."""
    return GENERATORS.get(spec.kind, _engine_generator)(cfg, spec, seed)


def _answer(cfg: TeacherConfig, spec: ModelSpec, todo: list[dict], seed: int, path: Path, done: dict) -> None:
    """Generate ``todo`` with the local or vLLM teacher, appending each finished batch to ``path``
    (flushed and fsynced) and to ``done``."""
    gen = local_generator(cfg, spec, seed)
    with open(path, "a", encoding="utf-8") as f, track(len(todo), "generate") as bar:

        def flush(batch: list[dict]) -> None:
            for rec in batch:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.advance(len(batch), tokens=sum(r["usage"]["completion_tokens"] for r in batch))

        for rec in gen.generate(todo, settings_from(cfg, seed), on_batch=flush, check_context=True):
            done[rec["id"]] = rec


def run_generate_shard(
    cfg: TeacherConfig, spec: ModelSpec, records: list[dict], work_dir: Path, shard: tuple[int, int], seed: int = 0
) -> dict:
    """Answer shard ``I`` of ``N`` of ``records`` into ``work_dir/shard-I-of-N.jsonl``; returns counts.

    Resumable: a rerun generates only the shard's records not in the file yet (none once it is
    done). The stage itself is written by :func:`run_generate`, which merges the parts.
    """
    if spec.is_api:
        raise UserError(
            "--shard is for local and vllm: teachers (an API teacher is already concurrent: raise teacher.concurrency)"
        )
    mine = [r for r in records if shard_of(r["id"], shard[1]) == shard[0]]
    path = shard_path(work_dir, shard)
    done = read_partial(path)
    todo = [r for r in mine if r["id"] not in done]
    if todo:
        _answer(cfg, spec, todo, seed, path, done)
    return {"shard": f"{shard[0]}/{shard[1]}", "records": len(mine), "generated": len(todo), "path": str(path)}


def read_shards(work_dir: Path) -> dict[str, dict]:
    """Records in every shard part (``shard-*-of-*.jsonl``) of ``work_dir``."""
    done: dict[str, dict] = {}
    for path in sorted(Path(work_dir).glob("shard-*-of-*.jsonl")):
        done.update(read_partial(path))
    return done


def check_failed_share(cfg: TeacherConfig, failed: int, total: int, failed_path: Path, work_dir: Path) -> None:
    """Stop (a one-line :class:`UserError`) when more than ``teacher.max_failed_share`` of ``total``
    prompts failed. The failures' list is copied into ``work_dir``, which outlives the stage's
    output folder (discarded by the error: nothing a rerun would trust as finished is left)."""
    if failed <= cfg.max_failed_share * total:
        return
    keep = Path(work_dir) / "failed.jsonl"
    if Path(failed_path).resolve() != keep.resolve():
        shutil.copyfile(failed_path, keep)
    raise UserError(
        f"{failed} of {total} prompts failed after retries, over teacher.max_failed_share "
        f"{cfg.max_failed_share:g}; their errors are in {keep}; rerun to retry them (answered prompts "
        "are cached, not paid again)"
    )


def run_generate(
    cfg: TeacherConfig,
    spec: ModelSpec,
    records: list[dict],
    out_dir: Path,
    work_dir: Path,
    seed: int = 0,
    prices: tuple[float | None, float | None] = (None, None),
    cache_path: Path | None = None,
) -> dict:
    """Answer ``records`` with the teacher; returns the stats written to ``stats.json``.

    ``spec`` is the teacher (:func:`potstill.teachers.spec.parse_model`); ``prices`` are the API's USD
    per million input/output tokens and ``cache_path`` its answer cache (API only). Finished shard
    parts in ``work_dir`` count as generated.
    """
    if spec.is_api:
        stats = run_api_generate(
            cfg,
            records,
            out_dir,
            seed=seed,
            prices=prices,
            cache_path=cache_path or Path(work_dir) / "cache.sqlite",
            spec=spec,
        )
        check_failed_share(cfg, stats["failed"], len(records), Path(out_dir) / "failed.jsonl", Path(work_dir))
        return stats
    partial = work_dir / "partial.jsonl"
    shards = read_shards(work_dir)
    done = {**shards, **read_partial(partial)}
    todo = [r for r in records if r["id"] not in done]
    if shards:
        say(f"  merging {len(shards)} answers from shard parts")
    if done:
        say(f"  resuming: {len(done)} of {len(records)} answers already generated")
    started = time.perf_counter()
    if todo:
        _answer(cfg, spec, todo, seed, partial, done)
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
    if shards:  # answered by `--shard` processes: their time is not in generation_seconds
        stats["from_shards"] = sum(r["id"] in shards for r in records)
    write_json(out_dir / "stats.json", stats)
    return stats


def api_answers(ctx, splits: dict[str, list[dict]], work: Path, max_new_tokens: int) -> dict[str, list[dict]]:
    """An API teacher's greedy answers on evaluation splits, through the generate stage's engine and cache
    (``ctx``: the :class:`~potstill.context.RunContext` of the run)."""
    cfg = ctx.teacher_config().model_copy(update={"top_logprobs": 0, "max_new_tokens": max_new_tokens})
    answers = {}
    for split, records in splits.items():
        out = work / f"api-{split}"
        run_generate(
            cfg,
            ctx.teacher,
            records,
            out,
            work / f"api-{split}.work",
            ctx.cfg.seed,
            prices=ctx.teacher_prices(),
            cache_path=ctx.api_cache(),
        )
        rows = {g["id"]: g for g in read_jsonl(out / "generations.jsonl")}
        missing = [r["id"] for r in records if r["id"] not in rows]
        if missing:
            raise UserError(
                f"the API teacher did not answer {len(missing)} {split} prompts (first: {missing[0]}); "
                f"see {out / 'failed.jsonl'} and rerun"
            )
        answers[split] = [
            {
                "id": r["id"],
                "text": rows[r["id"]]["text"],
                "finish_reason": rows[r["id"]]["finish_reason"],
                **rows[r["id"]]["usage"],
            }
            for r in records
        ]
    return answers
