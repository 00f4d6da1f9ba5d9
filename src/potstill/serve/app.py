"""The OpenAI-compatible HTTP app around any chat backend.

Routes: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` and ``GET /openapi.json`` (no key
needed for these two). The app owns what every backend shares: the API key (401), the request
size limit (413), the model-name check (404), request validation (400) and OpenAI-style error
bodies ``{"error": {"message", "type", "param", "code"}}`` (500 for backend failures). Each
answer carries an ``x-potstill-model`` header naming the model that produced it (the ``model``
field of the response or of the first stream chunk); a routing gateway's answers
(:mod:`potstill.route.gateway`) also say where they were routed and their score.

A client that disconnects (or gives up on a timeout) before its answer is ready has its request
cancelled: the backend's generation for it stops and its batch slot is freed; the access log shows
status 499. A streamed request stops the same way when its client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .schemas import APIError, ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelCard, ModelList

log = logging.getLogger("potstill.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much of a too-large body before answering 413
MODEL_HEADER = "x-potstill-model"
CLIENT_GONE = 499  # nginx's "client closed request": logged, never seen by the client

REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
    }
}
ERRORS = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "invalid request (bad JSON, field, role, or prompt + max_tokens beyond the context)"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "request body too large"),
        (500, "backend failure"),
        (503, "the server is shutting down"),
    )
}
CHAT_RESPONSES = {
    200: {
        "model": ChatCompletion,
        "description": "the completion (JSON), or server-sent "
        "events of chat.completion.chunk objects with `stream: true`",
        "content": {"text/event-stream": {}},
    },
    **ERRORS,
}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def create_app(
    backend, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, model_name: str | None = None
) -> FastAPI:
    """Build the app serving ``backend`` (see :class:`potstill.serve.backend.ChatBackend`).

    ``api_key``: when set, ``/v1/*`` needs ``Authorization: Bearer KEY`` (or ``x-api-key``).
    ``max_body_bytes``: larger request bodies get 413. ``model_name``: the name clients must
    ask for (default ``backend.model_name``; a backend may list more in ``model_names``);
    requests without ``model`` are accepted. A backend may also offer ``stats() -> dict``
    (shown by ``/health``) and ``async aclose()`` (called at shutdown).
    """
    names = [model_name] if model_name else list(getattr(backend, "model_names", None) or [backend.model_name])
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        if hasattr(backend, "aclose"):
            await backend.aclose()

    app = FastAPI(title="potstill serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.backend = backend
    app.openapi = lambda: app.openapi_schema or set_openapi(app)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key.", code="invalid_api_key")

    @app.get("/health")
    async def health():
        stats = backend.stats() if hasattr(backend, "stats") else {}
        return {"status": "ok", "model": names[0], "models": names, "stats": stats}

    @app.get("/v1/models", responses={200: {"model": ModelList}, 401: ERRORS[401]})
    async def models(request: Request):
        authorize(request)
        return ModelList(data=[ModelCard(id=n, created=started) for n in names]).model_dump()

    @app.get("/v1/models/{model_id:path}", responses={200: {"model": ModelCard}, 401: ERRORS[401], 404: ERRORS[404]})
    async def model(model_id: str, request: Request):
        authorize(request)
        if model_id not in names:
            raise APIError(404, f"The model '{model_id}' does not exist.", code="model_not_found")
        return ModelCard(id=model_id, created=started).model_dump()

    @app.post("/v1/chat/completions", openapi_extra=REQUEST_BODY, responses=CHAT_RESPONSES)
    async def chat_completions(request: Request):
        """OpenAI's chat completions for the served model.

        ``max_tokens`` (or ``max_completion_tokens``): when the prompt plus this limit exceeds the
        model's context, the answer is 400 ``context_length_exceeded`` (as OpenAI and vLLM answer),
        never a silently shorter limit. Without it, a completion may use the server's default
        (``potstill serve --max-tokens``), cut to what the context leaves (``finish_reason: "length"``).
        Roles: system, user, assistant, developer; others (tool, function, unknown) get 400.
        """
        authorize(request)
        req = parse_request(await read_json(request, max_body_bytes))
        if req.model is not None and req.model not in names:
            raise APIError(
                404,
                f"The model {req.model!r} does not exist; this server has {', '.join(names)}.",
                code="model_not_found",
                param="model",
            )
        if req.stream:
            chunks = backend.stream(req).__aiter__()
            try:
                first = await unless_disconnected(request, chunks.__anext__())
            except ClientGone:
                await chunks.aclose()
                return client_gone()
            except (APIError, StopAsyncIteration) as e:
                await chunks.aclose()
                if isinstance(e, APIError):
                    raise
                raise APIError(500, "the backend sent no chunks") from None
            except Exception as e:
                await chunks.aclose()
                raise internal(e) from None
            return StreamingResponse(
                sse(first, chunks),
                media_type="text/event-stream",
                headers={
                    MODEL_HEADER: str(field(first, "model")),
                    **route_headers(first),
                    "cache-control": "no-cache",
                    "x-accel-buffering": "no",
                },
            )
        try:
            resp = await unless_disconnected(request, backend.complete(req))
        except ClientGone:
            return client_gone()
        except APIError:
            raise
        except Exception as e:
            raise internal(e) from None
        return JSONResponse(dump(resp), headers={MODEL_HEADER: str(field(resp, "model")), **route_headers(resp)})

    return app


def set_openapi(app: FastAPI) -> dict:
    """FastAPI's OpenAPI document plus the chat request's schema (the route reads its body itself, to
    enforce the size limit before parsing, so FastAPI does not see the model)."""
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    body = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(body.pop("$defs", {}))
    spec["components"]["schemas"]["ChatCompletionRequest"] = body
    app.openapi_schema = spec
    return spec


async def unless_disconnected(request: Request, awaitable) -> Any:
    """Await ``awaitable``; if the client disconnects first, cancel it (the backend drops the
    request's rows from its batch) and raise :class:`ClientGone`. Call once the body is read."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled
        work.cancel()
        gone.cancel()
        raise
    gone.cancel()
    await asyncio.wait({gone})  # its receive() is over before a streaming response starts its own
    if work in done:
        return work.result()
    work.cancel()
    await asyncio.wait({work})  # let the cancellation run its cleanup before answering
    raise ClientGone


async def disconnected(request: Request) -> None:
    """Returns once the ASGI server reports ``http.disconnect`` (after the response, or when the client left)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a stray message: never spin


def client_gone() -> Response:
    log.info("client disconnected; its request was cancelled")
    return Response(status_code=CLIENT_GONE)


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object; 413 past ``limit`` bytes, 400 if it is not a JSON object."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    size, body = 0, bytearray()
    async for part in request.stream():  # a too-large body is still drained, so the client reads our 413
        size += len(part)
        if not too_big:
            body += part
            too_big = len(body) > limit
        if too_big and size > DRAIN_LIMIT:
            break
    if too_big:
        raise APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")
    try:
        data = json.loads(bytes(body))
    except (ValueError, RecursionError) as e:  # also: bad UTF-8, too deep, an integer of > 4300 digits
        raise APIError(400, f"The request body is not valid JSON ({str(e)[:200]}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    if b"\\ud" in body.lower():  # only a \u escape can make a lone surrogate, which no tokenizer takes
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(
                400, "The request body is not valid JSON (a lone UTF-16 surrogate escape).", code="invalid_json"
            ) from None
    return data


def parse_request(data: dict) -> ChatCompletionRequest:
    """Validate a chat request; the first problems become one 400 message."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        problems = "; ".join(f"{param(err['loc']) or 'body'}: {err['msg']}" for err in errors[:3])
        raise APIError(
            400,
            f"Invalid request: {problems}",
            param=param(errors[0]["loc"]) or None,
            code="invalid_value" if errors[0]["type"] == "invalid_value" else "invalid_request",
        ) from None


def param(loc: tuple) -> str:
    """A validation error's location as OpenAI names a parameter: ``messages[0].role``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def internal(e: Exception) -> APIError:
    """Log a backend failure and turn it into a 500."""
    log.error("request failed", exc_info=e)
    return APIError(500, f"Internal server error ({type(e).__name__}: {e})", code="internal_error")


def dump(obj: Any) -> Any:
    """A pydantic model (or a plain dict) as JSON-ready data."""
    return obj.model_dump() if isinstance(obj, BaseModel) else obj


def route_headers(obj: Any) -> dict:
    """``x-potstill-routed-to``, ``x-potstill-route-score`` (and ``x-potstill-teacher-error``) from a
    routing gateway's ``potstill`` object; nothing for a plain backend."""
    info = obj.get("potstill") if isinstance(obj, dict) else None
    if not info:
        return {}
    headers = {"x-potstill-routed-to": str(info.get("routed_to")), "x-potstill-route-score": f"{info.get('score'):.6g}"}
    if info.get("teacher_error"):
        headers["x-potstill-teacher-error"] = str(info["teacher_error"]).encode("ascii", "replace").decode()[:200]
    return headers


def field(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) if isinstance(obj, BaseModel) else obj.get(name)


async def sse(first, chunks):
    """Server-sent events: ``data: {chunk}`` lines, then ``data: [DONE]``; a failure ends with an error event."""
    try:
        yield f"data: {json.dumps(dump(first), ensure_ascii=False)}\n\n"
        async for c in chunks:
            yield f"data: {json.dumps(dump(c), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as e:
        err = e if isinstance(e, APIError) else internal(e)
        yield f"data: {json.dumps(err.body())}\n\n"
    finally:
        await chunks.aclose()
