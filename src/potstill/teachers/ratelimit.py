"""Token buckets for requests/min and tokens/min, and retry timing (backoff, ``Retry-After``).

A bucket holds at most one second of its per-minute budget (at least one request, and at
least any single acquisition), refills continuously, and may go into debt: a request whose
real token usage exceeds its estimate is charged afterwards with :meth:`TokenBucket.charge`,
so later requests wait. Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time


class TokenBucket:
    """``per_minute`` units per minute; ``await acquire(n)`` waits until ``n`` units are available."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` units, waiting first if needed; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return waited
                delay = (need - self.level) / self.rate
                await asyncio.sleep(delay)
                waited += delay

    def charge(self, amount: float) -> None:
        """Adjust the bucket after the fact: positive takes more units (may go negative), negative refunds."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


class RateLimiter:
    """Requests/min and tokens/min limits together (either may be ``None``: unlimited)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    async def acquire(self, est_tokens: int) -> float:
        """Wait for one request slot and ``est_tokens`` tokens; returns the seconds waited."""
        waited = 0.0
        if self.requests:
            waited += await self.requests.acquire(1)
        if self.tokens:
            waited += await self.tokens.acquire(est_tokens)
        return waited

    def settle(self, est_tokens: int, used_tokens: int | None) -> None:
        """Correct the token bucket once the real usage (or ``None``: nothing used) is known."""
        if self.tokens:
            self.tokens.charge((used_tokens or 0) - est_tokens)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (1, 2, ...): uniform in [d/2, d],
    ``d = min(cap, base * 2**(attempt-1))``."""
    d = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(d / 2, d)


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent/bad."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
