"""The OpenAI-compatible HTTP app around any chat backend.

Routes: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (no key needed). The app owns what
every backend shares: the API key (401), the request size limit (413), the model-name check
(404), request validation (400) and OpenAI-style error bodies ``{"error": {...}}`` (500 for
backend failures). Each answer carries an ``x-potstill-model`` header naming the model that
produced it (the ``model`` field of the response or of the first stream chunk); a routing
gateway's answers (:mod:`potstill.route.gateway`) also say where they were routed and their score.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import APIError, ChatCompletionRequest, ModelCard

log = logging.getLogger("potstill.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much of a too-large body before answering 413
MODEL_HEADER = "x-potstill-model"


def create_app(backend, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               model_name: str | None = None) -> FastAPI:
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

    app = FastAPI(title="potstill serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.backend = backend

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

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [ModelCard(id=n, created=started).model_dump() for n in names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        authorize(request)
        if model_id not in names:
            raise APIError(404, f"The model '{model_id}' does not exist.", code="model_not_found")
        return ModelCard(id=model_id, created=started).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req = parse_request(await read_json(request, max_body_bytes))
        if req.model is not None and req.model not in names:
            raise APIError(404, f"The model '{req.model}' does not exist; this server has {', '.join(names)}.",
                           code="model_not_found")
        if req.stream:
            chunks = backend.stream(req).__aiter__()
            try:
                first = await chunks.__anext__()
            except (APIError, StopAsyncIteration) as e:
                await chunks.aclose()
                if isinstance(e, APIError):
                    raise
                raise APIError(500, "the backend sent no chunks") from None
            except Exception as e:  # noqa: BLE001
                await chunks.aclose()
                raise internal(e) from None
            return StreamingResponse(sse(first, chunks), media_type="text/event-stream",
                                     headers={MODEL_HEADER: str(field(first, "model")), **route_headers(first),
                                              "cache-control": "no-cache", "x-accel-buffering": "no"})
        try:
            resp = await backend.complete(req)
        except APIError:
            raise
        except Exception as e:  # noqa: BLE001
            raise internal(e) from None
        return JSONResponse(dump(resp), headers={MODEL_HEADER: str(field(resp, "model")), **route_headers(resp)})

    return app


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON ({e}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def parse_request(data: dict) -> ChatCompletionRequest:
    """Validate a chat request; the first problems become one 400 message."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors()[:3])
        raise APIError(400, f"Invalid request: {problems}", code="invalid_request") from None


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
    except Exception as e:  # noqa: BLE001 - headers are sent; report in-band like OpenAI does
        err = e if isinstance(e, APIError) else internal(e)
        yield f"data: {json.dumps(err.body())}\n\n"
    finally:
        await chunks.aclose()
