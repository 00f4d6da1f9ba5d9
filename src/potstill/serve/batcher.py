"""Request batching: concurrent requests are collected for a few milliseconds and run together.

One worker task per event loop takes the first waiting item, waits up to ``wait_ms`` for more
(up to ``max_batch``), splits them into groups of equal ``key(item)`` and runs each group with
one blocking ``run(items)`` call in a thread (``asyncio.to_thread``), so the event loop stays
responsive while the model works. Items that arrive meanwhile form the next batch. Only one
``run`` is in flight at a time, so ``run`` need not be thread-safe.

A submitter that is cancelled (its client went away) leaves at once: a waiting item is dropped
before it is batched, and for an item already running ``cancel(item)`` is called so that ``run``
can stop working on it (the local backend ends the row at its next decoding step).
:meth:`Batcher.abort` fails every waiting and running item with one error (at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("potstill.serve")


class Batcher:
    """Collects submitted items into batches for ``run`` (see the module docstring)."""

    def __init__(
        self,
        run: Callable[[list[Any]], None],
        max_batch: int = 16,
        wait_ms: float = 5.0,
        key: Callable[[Any], Hashable] | None = None,
        cancel: Callable[[Any], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run, self.max_batch, self.wait = run, max_batch, max(0.0, wait_ms) / 1000.0
        self.key = key or (lambda item: None)
        self.cancel = cancel or (lambda item: None)
        self.batches = 0
        self.rows = 0
        self.max_rows = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._running: list[tuple[Any, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._aborted: Exception | None = None

    def stats(self) -> dict:
        """Counters: batches run, rows run, the largest batch; items waiting and running now (not cancelled)."""
        return {
            "batches": self.batches,
            "rows": self.rows,
            "max_batch_rows": self.max_rows,
            "waiting": sum(not f.done() for _, f in self._pending),
            "running": sum(not f.done() for _, f in self._running),
        }

    async def submit(self, item: Any) -> None:
        """Queue ``item``; returns once its batch has run (re-raises the batch's exception)."""
        if self._aborted is not None:
            raise self._aborted
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._pending, self._running, self._wake = loop, [], [], asyncio.Event()
            self._task = loop.create_task(self._work(), name="potstill-batcher")
        fut = loop.create_future()
        self._pending.append((item, fut))
        self._wake.set()
        try:
            await fut
        except asyncio.CancelledError:
            self.cancel(item)  # a running batch drops it at its next step; a waiting one is never batched
            raise

    def abort(self, error: Exception) -> int:
        """Fail every waiting and running item with ``error`` (and ``cancel`` the running ones); later
        submissions fail with it at once. Returns how many items were failed. Call on the batcher's loop."""
        self._aborted = error
        failed = 0
        for item, fut in self._running + self._pending:
            if not fut.done():
                self.cancel(item)
                fut.set_exception(error)
                failed += 1
        self._pending = []
        return failed

    async def aclose(self) -> None:
        """Stop the worker (a batch already running in its thread finishes on its own); a later
        :meth:`submit` starts afresh."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task, self._aborted = None, None

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        while not any(not f.done() for _, f in self._pending):
            self._pending = []
            self._wake.clear()
            await self._wake.wait()
        if self.wait and len(self._pending) < self.max_batch:
            await asyncio.sleep(self.wait)
        live = [(item, fut) for item, fut in self._pending if not fut.done()]  # drop cancelled requests
        batch, self._pending = live[: self.max_batch], live[self.max_batch :]
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            try:
                groups: dict[Hashable, list] = {}
                for item, fut in batch:
                    groups.setdefault(self.key(item), []).append((item, fut))
                for group in groups.values():
                    await self._run_group(group)
            except Exception as e:
                log.exception("batching failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    async def _run_group(self, group: list[tuple[Any, asyncio.Future]]) -> None:
        group = [(item, fut) for item, fut in group if not fut.done()]  # cancelled while an earlier group ran
        if not group:
            return
        items = [item for item, _ in group]
        error = None
        self._running = group
        try:
            await asyncio.to_thread(self.run, items)
        except Exception as e:
            log.exception("batch of %d failed", len(items))
            error = e
        finally:
            self._running = []
        self.batches += 1
        self.rows += len(items)
        self.max_rows = max(self.max_rows, len(items))
        for _, fut in group:
            if not fut.done():
                fut.set_exception(error) if error else fut.set_result(None)
