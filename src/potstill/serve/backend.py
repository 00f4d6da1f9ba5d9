"""The local Hugging Face backend: chat requests answered by batched ``generate`` calls.

A backend is anything with ``model_name``, ``async complete(request) -> ChatCompletion`` and
``stream(request) -> async iterator of ChatCompletionChunk`` (see :class:`ChatBackend`);
:func:`potstill.serve.app.create_app` serves any of them.

Streaming is incremental: each streamed request is a row of a running batch and its text is
sent as it is decoded (held back only where it might still become a stop string). Defaults
follow OpenAI: ``temperature`` 1 (sampling), ``top_p`` 1; ``temperature=0`` is greedy. Without
``max_tokens`` a completion may use ``default_max_tokens``, cut to what the model's context leaves
(``finish_reason="length"``); an explicit ``max_tokens`` that does not fit beside the prompt is
refused (400 ``context_length_exceeded``, as OpenAI and vLLM answer). The text is returned as
decoded, not stripped. A cancelled request (its client went away) leaves its batch at the next
decoding step; :meth:`HFBackend.abort` ends everything in flight with 503 (shutdown).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from ..chat import encode_prompt
from ..teachers.hf import LocalGenerator
from .batcher import Batcher
from .decode import Row, TokenText, generate_rows
from .schemas import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
    TopLogprob,
    Usage,
)


class ChatBackend(Protocol):
    """What :func:`potstill.serve.app.create_app` needs from a model backend."""

    model_name: str

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion: ...

    def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]: ...


def model_fingerprint(path: str | Path) -> str:
    """``fp_`` + a hash of config.json and the names and sizes of the directory's files."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    return "fp_" + h.hexdigest()[:12]


class HFBackend:
    """Serves one local causal LM (a :class:`potstill.teachers.hf.LocalGenerator`) with batching.

    Another engine subclasses it and overrides ``_context`` and ``_decode`` (how one batch of rows is
    decoded), as :class:`potstill.serve.ct2backend.CT2Backend` does."""

    def __init__(
        self,
        generator,
        model_name: str,
        max_batch: int = 16,
        batch_wait_ms: float = 5.0,
        default_max_tokens: int = 256,
        fingerprint: str | None = None,
    ):
        self.gen, self.model_name = generator, model_name
        self.fingerprint = fingerprint or model_fingerprint(generator.path)
        self.default_max_tokens = default_max_tokens
        self.context = self._context(generator)
        self.text = TokenText(generator.tokenizer)
        self.batcher = Batcher(
            self._run, max_batch=max_batch, wait_ms=batch_wait_ms, cancel=lambda row: row.cancelled.set()
        )
        self.requests = 0
        # Encode once now: a tokenizer saved with padding/truncation settings resets them on its first
        # call, which must not race the decoding thread (the Rust tokenizer refuses shared mutation).
        encode_prompt(generator.tokenizer, [{"role": "user", "content": "hello"}])

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        model_name: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        **kwargs,
    ) -> HFBackend:
        """Load the model in ``path`` (raises :class:`potstill.errors.UserError` for a bad dir)."""

        gen = LocalGenerator(path, dtype=dtype, device=device)
        return cls(gen, model_name or Path(path).resolve().name, **kwargs)

    def stats(self) -> dict:
        """Request and batching counters (shown by ``/health``)."""
        return {"requests": self.requests, **self.batcher.stats()}

    def abort(self, reason: str = "the server is shutting down") -> int:
        """End every waiting and running request with 503 ``reason``; returns how many rows were ended."""
        return self.batcher.abort(APIError(503, reason, code="server_shutting_down"))

    async def aclose(self) -> None:
        """End what is still in flight (503) and stop the batching worker."""
        self.abort()
        await self.batcher.aclose()

    @staticmethod
    def _context(generator) -> int | None:
        return context_length(generator.model)

    def _run(self, rows: list[Row]) -> None:
        for group in fit_context([r for r in rows if not r.cancelled.is_set()], self.context):
            if all(r.cancelled.is_set() for r in group):  # cancelled while an earlier group ran
                continue
            self._decode(group)

    def _decode(self, rows: list[Row]) -> None:
        """Decode one batch of rows that fits the context (blocking)."""
        generate_rows(self.gen.model, self.gen.tokenizer, self.gen.eos_ids, rows, self.gen.device)

    def _rows(self, req: ChatCompletionRequest, n: int, on_event=None, confidence: bool = False) -> list[Row]:
        try:
            prompt = encode_prompt(self.gen.tokenizer, req.wire_messages())
        except Exception as e:
            raise APIError(
                400, f"cannot format these messages with the model's chat template ({e})", code="invalid_messages"
            ) from None
        room = (self.context - len(prompt)) if self.context else None
        if room is not None and room < 1:
            raise APIError(
                400,
                f"the prompt is {len(prompt)} tokens; this model's context is {self.context}",
                code="context_length_exceeded",
                param="messages",
            )
        asked = req.token_limit()
        if room is not None and asked is not None and asked > room:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you "
                f"requested {len(prompt) + asked} tokens ({len(prompt)} in the messages, {asked} in "
                "the completion). Please reduce the length of the messages or completion.",
                code="context_length_exceeded",
                param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
            )
        limit = asked or self.default_max_tokens
        limit = min(limit, room) if room is not None else limit
        temperature = 1.0 if req.temperature is None else req.temperature
        self.requests += 1
        return [
            Row(
                prompt=prompt,
                max_tokens=limit,
                temperature=temperature,
                top_p=req.top_p or 1.0,
                logprobs=req.logprobs,
                k=req.k(),
                stops=req.stops(),
                seed=None if req.seed is None else req.seed + i,
                on_event=on_event,
                confidence=confidence,
            )
            for i in range(n)
        ]

    def _entries(self, entries) -> list[TokenLogprob]:
        out = []
        for tid, lp, tops in entries:
            text, data = self.text.get(tid)
            top = [
                TopLogprob(token=self.text.get(t)[0], logprob=v, bytes=self.text.get(t)[1], token_id=t) for t, v in tops
            ]
            out.append(TokenLogprob(token=text, logprob=lp, bytes=data, token_id=tid, top_logprobs=top))
        return out

    async def complete(self, req: ChatCompletionRequest) -> ChatCompletion:
        """Answer a non-streamed request (``n`` completions, batched with everything else)."""
        return self.completion(req, await self.run(req))

    async def run(self, req: ChatCompletionRequest, confidence: bool = False) -> list[Row]:
        """Decode ``req``'s ``n`` rows (with per-step confidence records when asked) and return them."""
        rows = self._rows(req, req.n, confidence=confidence)
        await asyncio.gather(*(self.batcher.submit(r) for r in rows))
        return rows

    def completion(self, req: ChatCompletionRequest, rows: list[Row]) -> ChatCompletion:
        """The OpenAI completion object for decoded ``rows``."""
        choices = [
            Choice(
                index=i,
                message=AssistantMessage(content=r.text),
                finish_reason=r.finish,
                logprobs=ChoiceLogprobs(content=self._entries(r.entries[: r.kept])) if r.logprobs else None,
                token_ids=r.token_ids(),
            )
            for i, r in enumerate(rows)
        ]
        used = sum(len(r.tokens) for r in rows)
        return ChatCompletion(
            id=new_id(),
            created=int(time.time()),
            model=self.model_name,
            system_fingerprint=self.fingerprint,
            choices=choices,
            usage=Usage(
                prompt_tokens=len(rows[0].prompt), completion_tokens=used, total_tokens=len(rows[0].prompt) + used
            ),
        )

    async def stream(self, req: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Answer a streamed request: a role chunk, content chunks as tokens are decoded, a finish chunk."""
        if req.n != 1:
            raise APIError(400, "streaming supports only n=1")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        (row,) = self._rows(req, 1, on_event=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        task = asyncio.ensure_future(self.batcher.submit(row))
        task.add_done_callback(lambda t: events.put_nowait(None))
        head = dict(id=new_id(), created=int(time.time()), model=self.model_name, system_fingerprint=self.fingerprint)

        def chunk(delta: Delta, finish=None, entries=None) -> ChatCompletionChunk:
            lp = ChoiceLogprobs(content=self._entries(entries)) if row.logprobs and entries is not None else None
            return ChatCompletionChunk(**head, choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=lp)])

        try:
            yield chunk(Delta(role="assistant", content=""))
            finish = None
            while finish is None:
                ev = await events.get()
                if ev is None:  # the batch ended without a final event: it failed
                    await task
                    raise RuntimeError("generation ended without a result")
                if ev["text"] or ev["entries"]:
                    yield chunk(Delta(content=ev["text"]), entries=ev["entries"])
                finish = ev.get("finish")
            yield chunk(Delta(), finish=finish)
            if req.stream_options and req.stream_options.include_usage:
                p, c = len(row.prompt), len(row.tokens)
                yield ChatCompletionChunk(
                    **head, choices=[], usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
                )
        finally:
            row.cancelled.set()
            if not task.done():
                task.cancel()


def fit_context(rows: list[Row], context: int | None) -> list[list[Row]]:
    """Split a batch so that (longest prompt + longest limit) fits the context in every part.

    Left padding puts every row at the batch's widest prompt, and finished rows keep advancing
    their positions, so a short prompt with a long limit next to a long prompt could run past
    the position table of a model with learned positions.
    """
    if context is None:
        return [rows]
    groups: list[list[Row]] = []
    width = limit = 0
    for r in sorted(rows, key=lambda r: len(r.prompt)):
        if groups and max(width, len(r.prompt)) + max(limit, r.max_tokens) <= context:
            groups[-1].append(r)
            width, limit = max(width, len(r.prompt)), max(limit, r.max_tokens)
        else:
            groups.append([r])
            width, limit = len(r.prompt), r.max_tokens
    return groups


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def context_length(model) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None
