"""The generate stage for API teachers: cache lookup, cost estimate, preflight, engine, outputs.

The SQLite cache is the source of truth: answers already cached are never requested again,
and ``generations.jsonl`` (one record per prompt id, prompt order), ``failed.jsonl`` (the
dead letters with their last error; never cached, so a rerun retries them) and ``stats.json``
are written atomically from it at the end. A run stopped by ``max_cost`` writes them too,
then raises :class:`BudgetStop` (exit code 3).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ..config import TeacherConfig
from ..errors import Incomplete, UserError
from ..io import write_json, write_jsonl
from ..models import load_tokenizer
from ..progress import say, track
from .api import ApiError, make_provider, preflight_error, resolve_api_key
from .cache import AnswerCache, cache_key
from .engine import Engine, EngineSettings, Job, estimate_tokens
from .ratelimit import backoff_delay
from .softlabels import TokenMapper, to_record
from .spec import ModelSpec, teacher_spec


class BudgetStop(Incomplete):
    """The run reached ``max_cost``: what was answered is written, the rest is left for a rerun (exit code 3)."""


def request_params(cfg: TeacherConfig, seed: int, provider: str) -> dict:
    """The decoding parameters sent to the API (and hashed into the cache key)."""
    sample = cfg.do_sample
    return {
        "max_tokens": cfg.max_new_tokens,
        "do_sample": sample,
        "temperature": cfg.temperature if sample else 0.0,
        "top_p": cfg.top_p if sample else 1.0,
        "top_logprobs": cfg.top_logprobs if provider == "openai" else 0,
        "seed": seed,
    }


def engine_settings(cfg: TeacherConfig, prices: tuple[float | None, float | None]) -> EngineSettings:
    return EngineSettings(
        concurrency=cfg.concurrency,
        rpm=cfg.rpm,
        tpm=cfg.tpm,
        timeout_s=cfg.timeout_s,
        max_attempts=cfg.max_attempts,
        backoff_base_s=cfg.backoff_base_s,
        backoff_max_s=cfg.backoff_max_s,
        max_cost=cfg.max_cost,
        usd_per_1m_in=prices[0] or 0.0,
        usd_per_1m_out=prices[1] or 0.0,
    )


async def preflight(provider, params: dict, s: EngineSettings, key_env: str | None) -> None:
    """One tiny request (1 token, same log-prob settings) so a bad URL, key or model fails in one line."""
    probe = dict(params, max_tokens=1)
    for attempt in range(1, s.max_attempts + 1):
        try:
            await asyncio.wait_for(provider.complete([{"role": "user", "content": "ping"}], probe), s.timeout_s)
            return
        except asyncio.TimeoutError:
            err = ApiError("timeout", f"timed out after {s.timeout_s:g}s")
        except ApiError as e:
            err = e
        if not err.retryable or (err.kind == "connection" and err.connect) or attempt == s.max_attempts:
            raise preflight_error(provider, err, attempt, key_env)
        await asyncio.sleep(max(backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s), err.retry_after or 0.0))


async def _run_engine(cfg, provider, cache, settings, params, jobs, seed, priced):
    try:
        await preflight(provider, params, settings, cfg.api_key_env)
        _estimate(jobs, params, settings, priced)
        with track(len(jobs), "generate") as bar:
            t0 = time.perf_counter()

            def on_done(r, job, answer):
                done = len(r.answered) + len(r.failed)
                bar.advance(
                    1,
                    tokens=answer["usage"]["completion_tokens"] if answer else 0,
                    **{
                        "answers/s": f"{done / max(time.perf_counter() - t0, 1e-9):.1f}",
                        "retries": r.retries,
                        "failed": len(r.failed),
                        "cost": f"${r.cost_usd:.4f}",
                    },
                )

            return await Engine(provider, cache, settings, params, on_done, seed).run(jobs)
    finally:
        await provider.aclose()


def _estimate(jobs: list[Job], params: dict, settings: EngineSettings, priced: bool) -> None:
    n_in = sum(j.est_prompt_tokens for j in jobs)
    n_out = len(jobs) * params["max_tokens"]
    line = f"  {len(jobs)} requests to send: ≈{n_in:,} prompt tokens, ≤{n_out:,} completion tokens"
    if priced:
        worst = (n_in * settings.usd_per_1m_in + n_out * settings.usd_per_1m_out) / 1e6
        line += f"; estimated cost ≤ ${worst:,.4f}"
        if settings.max_cost is not None and worst > settings.max_cost:
            line += f" (max_cost ${settings.max_cost:g} may stop the run first)"
    say(line)


def run_api_generate(
    cfg: TeacherConfig,
    records: list[dict],
    out_dir: Path,
    seed: int = 0,
    prices: tuple[float | None, float | None] = (None, None),
    cache_path: Path | None = None,
    spec: ModelSpec | None = None,
) -> dict:
    """Answer ``records`` with an API teacher; writes the outputs into ``out_dir`` and returns the stats.

    ``spec``: the teacher (default: parsed from ``cfg``, the ``teacher`` section)."""
    spec = spec or teacher_spec(cfg, Path)
    provider_name, model = spec.provider, spec.name
    params = request_params(cfg, seed, provider_name)
    settings = engine_settings(cfg, prices)
    priced = prices[0] is not None or prices[1] is not None
    if cfg.max_cost is not None and not priced:
        raise UserError(
            "max_cost needs the teacher's token prices (prices.teacher.usd_per_1m_input_tokens / "
            "usd_per_1m_output_tokens, or --price-in / --price-out)"
        )
    if cfg.top_logprobs and provider_name == "anthropic":
        say("  [yellow]warning[/]: the Anthropic Messages API returns no log-probabilities; top_logprobs ignored")
    base_url = spec.base_url
    keys = {r["id"]: cache_key(provider_name, model, params, r["messages"]) for r in records}
    cache = AnswerCache(cache_path)
    started = time.perf_counter()
    try:
        answers = cache.get_many(list(keys.values()))
        jobs = {}
        for r in records:
            k = keys[r["id"]]
            if k not in answers and k not in jobs:
                jobs[k] = Job(k, r["messages"], estimate_tokens(r["messages"]))
        n_cached = sum(keys[r["id"]] in answers for r in records)
        if n_cached:
            say(f"  {n_cached} of {len(records)} answers already cached ({cache.path})")
        result = None
        if jobs:
            api_key = resolve_api_key(provider_name, cfg.api_key_env, base_url)
            provider = make_provider(provider_name, model, base_url, api_key, cfg.timeout_s, cfg.concurrency)
            result = asyncio.run(_run_engine(cfg, provider, cache, settings, params, list(jobs.values()), seed, priced))
            answers.update(result.answered)
            if result.fatal is not None:
                raise preflight_error(provider, result.fatal, 1, cfg.api_key_env)
    finally:
        cache.close()
    return _write_outputs(cfg, records, keys, answers, result, out_dir, time.perf_counter() - started, n_cached)


def _write_outputs(cfg, records, keys, answers, result, out_dir: Path, elapsed: float, n_cached: int) -> dict:
    mapper = None
    if cfg.tokenizer and cfg.top_logprobs:
        mapper = TokenMapper(load_tokenizer(cfg.tokenizer))
    rows = [to_record(r["id"], answers[keys[r["id"]]], mapper) for r in records if keys[r["id"]] in answers]
    failed_by_key = result.failed if result else {}
    failed = [{"id": r["id"], **failed_by_key[keys[r["id"]]]} for r in records if keys[r["id"]] in failed_by_key]
    write_jsonl(out_dir / "generations.jsonl", rows)
    write_jsonl(out_dir / "failed.jsonl", failed)
    n_len = sum(r["finish_reason"] == "length" for r in rows)
    if n_len:
        say(f"  [yellow]warning[/]: {n_len} of {len(rows)} answers hit max_new_tokens (finish_reason=length)")
    if failed:
        say(
            f"  [yellow]warning[/]: {len(failed)} prompts failed after retries (see failed.jsonl); "
            "a rerun asks only for them (answers are cached; a written stage needs --force generate)"
        )
    if cfg.top_logprobs and rows and not any(r.get("top_logprobs") or r.get("top_logprobs_text") for r in rows):
        say("  [yellow]warning[/]: the API returned no log-probabilities")
    elif mapper and any(r.get("top_logprobs_text") for r in rows):
        n = sum(bool(r.get("top_logprobs_text")) for r in rows)
        say(f"  [yellow]warning[/]: {n} answers had tokens unknown to {cfg.tokenizer}; kept as top_logprobs_text")
    stats = {
        "answered": len(rows),
        "failed": len(failed),
        "unanswered": len(records) - len(rows) - len(failed),
        "cached_before": n_cached,
        "finish_length": n_len,
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in rows),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in rows),
        "requests": result.requests if result else 0,
        "retries": result.retries if result else 0,
        "cost_usd": round(result.cost_usd, 6) if result else 0.0,
        "stopped": result.stopped if result else None,
        "generation_seconds": round(elapsed, 3),
    }
    write_json(out_dir / "stats.json", stats)
    if stats["stopped"] == "max_cost":
        raise BudgetStop(
            f"max_cost ${cfg.max_cost:g} reached (${stats['cost_usd']:.4f} spent): {len(rows)} of "
            f"{len(records)} prompts answered, {stats['unanswered']} left; rerun with a higher max_cost "
            "to continue (cached answers are not paid again)"
        )
    return stats
