"""The async generation engine for API teachers.

``concurrency`` workers take unique requests (prompts with identical messages share one) from
a queue. Each attempt waits for the rate limiter (requests/min, tokens/min), reserves its
worst-case cost against ``max_cost``, and runs under a per-request timeout. 429, 5xx,
timeouts, dropped connections and malformed answers are retried with exponential backoff and
jitter, waiting at least ``Retry-After``; after ``max_attempts`` the request is dead-lettered
with its last error. A 400-class refusal is dead-lettered at once; 401/403/404 stop the run, and
so do ``max(50, 4 * concurrency)`` failures in a row (the endpoint went away: no point retrying
every prompt to its last attempt).
Every answer is committed to the cache as it arrives (failures never are).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import ApiError, Provider
from .cache import AnswerCache
from .ratelimit import RateLimiter, backoff_delay


@dataclass
class Job:
    """One unique request: its cache key, messages and estimated prompt tokens."""

    key: str
    messages: list[dict]
    est_prompt_tokens: int


@dataclass
class EngineSettings:
    """How hard and how long the engine tries (see :class:`potstill.config.TeacherConfig`)."""

    concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 60.0
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_cost: float | None = None
    usd_per_1m_in: float = 0.0
    usd_per_1m_out: float = 0.0


@dataclass
class EngineResult:
    """What one run did: new answers and dead-letter rows by cache key, and counters."""

    answered: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)
    unsent: int = 0
    stopped: str | None = None
    requests: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    fatal: ApiError | None = None


def estimate_tokens(messages: list[dict]) -> int:
    """A provider-neutral prompt-token estimate: ~4 characters per token plus per-message overhead."""
    return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 4 * len(messages) + 3


class Engine:
    """Runs jobs against one provider; ``on_done(result, job, answer_or_None)`` after each job."""

    def __init__(
        self,
        provider: Provider,
        cache: AnswerCache,
        settings: EngineSettings,
        params: dict,
        on_done: Callable[[EngineResult, Job, dict | None], None] | None = None,
        seed: int = 0,
    ):
        self.provider, self.cache, self.s, self.params = provider, cache, settings, params
        self.on_done = on_done or (lambda *a: None)
        self.limiter = RateLimiter(settings.rpm, settings.tpm)
        self.rng = random.Random(seed)
        self.result = EngineResult()
        self.reserved = 0.0
        self.stop = False
        self.failures_in_a_row = 0
        self.breaker = max(50, 4 * settings.concurrency)  # failures in a row, no success between: stop the run
        self._budget: asyncio.Condition | None = None

    def cost(self, usage: dict) -> float:
        """USD for one answer's usage at the configured prices."""
        return (
            usage["prompt_tokens"] * self.s.usd_per_1m_in + usage["completion_tokens"] * self.s.usd_per_1m_out
        ) / 1e6

    def worst_cost(self, job: Job) -> float:
        return self.cost({"prompt_tokens": job.est_prompt_tokens, "completion_tokens": self.params["max_tokens"]})

    async def run(self, jobs: list[Job]) -> EngineResult:
        """Answer ``jobs``; returns when all are answered, dead-lettered, or the run was stopped."""
        self._budget = asyncio.Condition()
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for j in jobs:
            queue.put_nowait(j)
        workers = [asyncio.create_task(self._worker(queue, i)) for i in range(min(self.s.concurrency, len(jobs)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        self.result.unsent = len(jobs) - len(self.result.answered) - len(self.result.failed)
        return self.result

    async def _worker(self, queue: asyncio.Queue, slot: int) -> None:
        while not self.stop:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self._do(job, slot)

    async def _reserve(self, amount: float) -> bool:
        """Hold ``amount`` USD of the budget; False (and stop the run) once it cannot fit any more."""
        if self.s.max_cost is None:
            return not self.stop
        async with self._budget:
            while True:
                if self.stop:
                    return False
                if self.result.cost_usd + self.reserved + amount <= self.s.max_cost:
                    self.reserved += amount
                    return True
                if self.reserved <= 0:
                    self.result.stopped, self.stop = "max_cost", True
                    self._budget.notify_all()
                    return False
                await self._budget.wait()

    async def _release(self, amount: float, spent: float) -> None:
        if self.s.max_cost is None:
            self.result.cost_usd += spent
            return
        async with self._budget:
            self.reserved -= amount
            self.result.cost_usd += spent
            self._budget.notify_all()

    async def _attempt(self, job: Job, slot: int) -> dict:
        try:
            return await asyncio.wait_for(self.provider.complete(job.messages, self.params, slot), self.s.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError("timeout", f"timed out after {self.s.timeout_s:g}s") from None

    async def _do(self, job: Job, slot: int = 0) -> None:
        r, err, attempt = self.result, None, 0
        est = job.est_prompt_tokens + self.params["max_tokens"]
        for attempt in range(1, self.s.max_attempts + 1):
            worst = self.worst_cost(job)
            if not await self._reserve(worst):
                return
            await self.limiter.acquire(est)
            r.requests += 1
            try:
                answer = await self._attempt(job, slot)
            except ApiError as e:
                err = e
                self.limiter.settle(est, None)
                await self._release(worst, 0.0)
                self.failures_in_a_row += 1
                if err.retryable and self.failures_in_a_row >= self.breaker and not self.stop:
                    err = ApiError(
                        "unavailable", f"{self.failures_in_a_row} requests in a row failed, the last with: {err}"
                    )
            else:
                self.failures_in_a_row = 0
                u = answer["usage"]
                self.limiter.settle(est, u["prompt_tokens"] + u["completion_tokens"] or est)
                answer.update(attempts=attempt, cost_usd=round(self.cost(u), 8))
                self.cache.put(job.key, self.provider.name, self.provider.model, answer)
                r.answered[job.key] = answer
                await self._release(worst, self.cost(u))
                self.on_done(r, job, answer)
                return
            if err.fatal:
                r.fatal, self.stop = err, True
                return
            if not err.retryable or attempt == self.s.max_attempts or self.stop:
                break
            r.retries += 1
            delay = backoff_delay(attempt, self.s.backoff_base_s, self.s.backoff_max_s, self.rng)
            await asyncio.sleep(max(delay, err.retry_after or 0.0))
        if self.stop and err is not None and err.retryable and attempt < self.s.max_attempts:
            return  # stopped (budget) between retries: not a dead letter, the next run asks again
        r.failed[job.key] = {"error": str(err), "kind": err.kind, "status": err.status, "attempts": attempt}
        self.on_done(r, job, None)
