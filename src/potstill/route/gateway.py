"""The routing gateway: the student answers; below the calibrated threshold the teacher answers instead.

:class:`RoutingBackend` is a chat backend for :func:`potstill.serve.app.create_app`, so the gateway
speaks the same OpenAI-compatible API as ``potstill serve MODEL`` (key, 413, streaming). For each
request the student decodes with confidence recording (:mod:`.features`); the router scores the
answer; at or above the threshold the student's completion is returned, below it the teacher is
asked and its answer returned. Every response carries a ``potstill`` object
(``{"routed_to", "score", "threshold", "student_model", "teacher_error"}``) and the headers
``x-potstill-model`` (who answered), ``x-potstill-routed-to`` and ``x-potstill-route-score``.

Every fallback is appended to the fallback log (:class:`FallbackLog`). When the teacher fails
(unreachable, timeout, error status) the student's answer is returned with
``potstill.teacher_error`` set and an ``x-potstill-teacher-error`` header, and the fallback is
logged with no teacher answer. A streamed request is decided before its first chunk: the whole
answer (the student's or the teacher's) is then sent as a role chunk, a content chunk and a finish
chunk, since the score needs the complete student answer.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from ..serve.backend import HFBackend, new_id
from ..serve.schemas import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from .features import Router, features


class FallbackLog:
    """Appends one JSON line per fallback; each line is a single ``write`` on an O_APPEND file, so a
    reader (``potstill run`` taking the log as a prompt source) never sees half a record from a live writer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def fallback_record(
    messages: list[dict],
    student_model: str,
    student_text: str,
    score: float,
    feats: dict,
    threshold: float,
    teacher_model: str,
    teacher_text: str | None,
    error: str | None,
) -> dict:
    """One fallback log line; ``messages`` make it a prompt record for the next round's training."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return {
        "id": f"fallback-{digest}",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "messages": messages,
        "score": score,
        "threshold": threshold,
        "features": feats,
        "student": {"model": student_model, "text": student_text},
        "teacher": {"model": teacher_model, "text": teacher_text},
        "teacher_error": error,
    }


class LocalTeacher:
    """A local teacher model served in-process (its own batching queue)."""

    def __init__(self, backend: HFBackend):
        self.backend, self.model_name = backend, backend.model_name

    async def answer(self, req: ChatCompletionRequest) -> dict:
        (row,) = await self.backend.run(req.model_copy(update={"n": 1, "logprobs": False}))
        return {
            "text": row.text,
            "finish_reason": row.finish,
            "usage": {"prompt_tokens": len(row.prompt), "completion_tokens": len(row.tokens)},
        }

    def abort(self, reason: str) -> int:
        return self.backend.abort(reason)

    async def aclose(self) -> None:
        await self.backend.aclose()


class ApiTeacher:
    """A teacher behind an API (:mod:`potstill.teachers.api` providers: OpenAI-compatible or Anthropic)."""

    def __init__(self, provider, default_max_tokens: int = 256, concurrency: int = 32):
        self.provider, self.model_name = provider, provider.model
        self.default_max_tokens = default_max_tokens
        self.slots: asyncio.Queue | None = None
        self.concurrency = concurrency

    async def answer(self, req: ChatCompletionRequest) -> dict:
        if self.slots is None:
            self.slots = asyncio.Queue()
            for i in range(self.concurrency):
                self.slots.put_nowait(i)
        temperature = 1.0 if req.temperature is None else req.temperature
        params = {
            "max_tokens": req.token_limit() or self.default_max_tokens,
            "do_sample": temperature > 0,
            "temperature": temperature,
            "top_p": req.top_p or 1.0,
            "seed": req.seed,
        }
        slot = await self.slots.get()
        try:
            out = await self.provider.complete(req.wire_messages(), params, slot=slot)
        finally:
            self.slots.put_nowait(slot)
        return {
            "text": out["text"],
            "finish_reason": out["finish_reason"] if out["finish_reason"] == "length" else "stop",
            "usage": out["usage"],
        }

    async def aclose(self) -> None:
        await self.provider.aclose()


class RoutingBackend:
    """Student first, teacher below the threshold (see the module docstring)."""

    def __init__(
        self,
        student: HFBackend,
        teacher,
        router: Router,
        log: FallbackLog | None = None,
        model_name: str | None = None,
        teacher_timeout: float | None = None,
    ):
        self.student, self.teacher, self.router, self.log = student, teacher, router, log
        self.teacher_timeout = teacher_timeout
        self.model_name = model_name or student.model_name
        self.counts = {"requests": 0, "student": 0, "teacher": 0, "teacher_errors": 0}
        self.asking: set[asyncio.Task] = set()  # teacher calls in flight (ended by abort)

    def stats(self) -> dict:
        return {
            **self.counts,
            "threshold": self.router.threshold,
            "signal": self.router.signal,
            "fallback_log": str(self.log.path) if self.log else None,
            "student_backend": self.student.stats(),
        }

    def abort(self, reason: str = "the server is shutting down") -> int:
        """Shutdown: the student's requests in flight get 503; those waiting for the teacher get the
        student's answer, flagged with ``reason``. Returns how many generations and teacher calls were ended."""
        asking, self.asking = self.asking, set()
        for call in asking:
            call.cancel()
        ended = self.student.abort(reason) + (self.teacher.abort(reason) if hasattr(self.teacher, "abort") else 0)
        return ended + len(asking)

    async def aclose(self) -> None:
        await self.student.aclose()
        if hasattr(self.teacher, "aclose"):
            await self.teacher.aclose()

    async def decide(self, req: ChatCompletionRequest) -> tuple[dict, dict]:
        """The answer to return as ``(completion dict, potstill info)``."""
        if req.n != 1:
            raise APIError(400, "the routing gateway answers one completion per request (n=1)")
        self.counts["requests"] += 1
        rows = await self.student.run(req, confidence=True)
        feats = features(rows[0].kept_steps())
        score = self.router.score(feats)
        info = {
            "routed_to": "student",
            "score": score,
            "threshold": self.router.threshold,
            "student_model": self.student.model_name,
            "teacher_error": None,
        }
        completion = self.student.completion(req, rows).model_dump()
        if not self.router.to_teacher(score):
            self.counts["student"] += 1
            return completion, info
        ans = None
        call = asyncio.ensure_future(asyncio.wait_for(self.teacher.answer(req), self.teacher_timeout))
        self.asking.add(call)
        try:
            await asyncio.wait({call})
        finally:
            self.asking.discard(call)
            call.cancel()  # when this request was cancelled (its client left); a no-op otherwise
        try:
            ans = call.result()
        except asyncio.CancelledError:  # abort(): the server is shutting down
            info["teacher_error"] = "the server is shutting down"
        except Exception as e:
            info["teacher_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        if self.log:  # every fallback, answered or not, is material for the next round
            self.log.append(
                fallback_record(
                    req.wire_messages(),
                    self.student.model_name,
                    rows[0].text,
                    score,
                    feats,
                    self.router.threshold,
                    self.teacher.model_name,
                    ans and ans["text"],
                    info["teacher_error"],
                )
            )
        if ans is None:
            self.counts["teacher_errors"] += 1
            self.counts["student"] += 1
            return completion, info
        self.counts["teacher"] += 1
        info["routed_to"] = "teacher"
        p, c = ans["usage"]["prompt_tokens"], ans["usage"]["completion_tokens"]
        teacher = ChatCompletion(
            id=new_id(),
            created=int(time.time()),
            model=self.teacher.model_name,
            choices=[
                Choice(index=0, message=AssistantMessage(content=ans["text"]), finish_reason=ans["finish_reason"])
            ],
            usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c),
        )
        return teacher.model_dump(), info

    async def complete(self, req: ChatCompletionRequest) -> dict:
        completion, info = await self.decide(req)
        return {**completion, "potstill": info}

    async def stream(self, req: ChatCompletionRequest):
        completion, info = await self.decide(req)
        head = dict(
            id=completion["id"],
            created=completion["created"],
            model=completion["model"],
            system_fingerprint=completion.get("system_fingerprint"),
        )
        choice = completion["choices"][0]

        def chunk(delta: Delta, finish=None, logprobs=None) -> dict:
            c = ChatCompletionChunk(**head, choices=[ChunkChoice(delta=delta, finish_reason=finish)]).model_dump()
            if logprobs is not None:
                c["choices"][0]["logprobs"] = logprobs
            return c

        yield {**chunk(Delta(role="assistant", content="")), "potstill": info}
        if choice["message"]["content"]:
            yield chunk(Delta(content=choice["message"]["content"]), logprobs=choice.get("logprobs"))
        yield chunk(Delta(), finish=choice["finish_reason"])
        if req.stream_options and req.stream_options.include_usage:
            yield ChatCompletionChunk(**head, choices=[], usage=Usage(**completion["usage"])).model_dump()
