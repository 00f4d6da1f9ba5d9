"""API teachers: ``openai:MODEL`` (any OpenAI-compatible chat-completions endpoint: OpenAI, vLLM,
llama.cpp, Ollama, LiteLLM, ``potstill serve``...) and ``anthropic:MODEL`` (the Messages API).

Both speak plain HTTP through ``httpx`` (no SDK-side retries: the engine owns retries, timeouts
and rate limits). :meth:`Provider.complete` returns a normalised answer::

    {"text": str, "finish_reason": "stop" | "length" | str,
     "usage": {"prompt_tokens": int, "completion_tokens": int},
     "logprobs": [[token, logprob, bytes, [[token, logprob, bytes, token_id], ...], token_id], ...] | None}

(``bytes`` and ``token_id`` may be None; ``token_id`` is an extension some servers, e.g. ``potstill
serve``, add to each log-prob entry.)

and raises :class:`ApiError` (with a ``kind`` that tells the engine whether to retry).
"""

from __future__ import annotations

import os

import httpx

from ..errors import UserError
from ..io import sha256_json
from .ratelimit import parse_retry_after

PROVIDERS = {
    "openai": {"url": "https://api.openai.com/v1", "key_env": "OPENAI_API_KEY"},
    "anthropic": {"url": "https://api.anthropic.com", "key_env": "ANTHROPIC_API_KEY"},
}
RETRYABLE = {"rate_limit", "server", "timeout", "connection", "malformed"}
FATAL = {"auth", "not_found", "unavailable"}


def teacher_identity(provider: str, model: str, base_url: str | None) -> str:
    """What stands for an API teacher's weights in stage hashes: provider, model and endpoint."""
    return sha256_json(
        {"provider": provider, "model": model, "base_url": (base_url or PROVIDERS[provider]["url"]).rstrip("/")}
    )


class ApiError(Exception):
    """A failed request. ``kind``: rate_limit, server, timeout, connection, malformed (retried);
    auth, not_found, unavailable (stop the run); bad_request (that row goes to the dead-letter file)."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        connect: bool = False,
    ):
        super().__init__(message)
        self.kind, self.status, self.retry_after, self.connect = kind, status, retry_after, connect

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        data = None
    msg = None
    if isinstance(data, dict):
        err = data.get("error")
        msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else data.get("detail"))
    text = str(msg) if msg else (resp.text or resp.reason_phrase or "")
    return " ".join(text.split())[:240]


def _status_error(resp: httpx.Response) -> ApiError:
    s = resp.status_code
    msg = f"HTTP {s}: {_error_message(resp)}".rstrip(": ")
    retry_after = parse_retry_after(resp.headers)
    if s == 429:
        return ApiError("rate_limit", msg, s, retry_after)
    if s in (408, 409) or s >= 500:
        return ApiError("server", msg, s, retry_after)
    if s in (401, 403):
        return ApiError("auth", msg, s)
    if s == 404:
        return ApiError("not_found", msg, s)
    return ApiError("bad_request", msg, s)


class Provider:
    """One API endpoint and model; subclasses build the request body and parse the answer."""

    name = ""
    path = ""

    def __init__(self, model: str, base_url: str | None, api_key: str | None, timeout: float, concurrency: int = 8):
        self.model = model
        self.base_url = (base_url or PROVIDERS[self.name]["url"]).rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.concurrency = concurrency
        self._clients: dict[int, httpx.AsyncClient] = {}

    def client(self, slot: int = 0) -> httpx.AsyncClient:
        """The HTTP client of worker ``slot``: one keep-alive connection each (httpcore's shared pool
        costs O(connections) per request, which dominated the CPU at concurrency 32)."""
        c = self._clients.get(slot)
        if c is None:
            c = self._clients[slot] = httpx.AsyncClient(
                base_url=self.base_url + "/",
                timeout=httpx.Timeout(self.timeout),
                trust_env=False,
                headers=self.headers(),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
        return c

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.path.lstrip('/')}"

    def headers(self) -> dict:
        return {}

    def body(self, messages: list[dict], params: dict) -> dict:
        raise NotImplementedError

    def parse(self, data: dict, params: dict) -> dict:
        raise NotImplementedError

    async def complete(self, messages: list[dict], params: dict, slot: int = 0) -> dict:
        """Send one request (on worker ``slot``'s connection); the normalised answer, or :class:`ApiError`."""
        try:
            resp = await self.client(slot).post(self.path.lstrip("/"), json=self.body(messages, params))
        except httpx.TimeoutException as e:
            raise ApiError("timeout", f"timed out after {self.timeout:g}s ({type(e).__name__})") from None
        except httpx.ConnectError as e:
            raise ApiError("connection", f"cannot connect ({_one_line(e)})", connect=True) from None
        except httpx.DecodingError as e:
            raise ApiError("malformed", f"undecodable response ({_one_line(e)[:120]})", 200) from None
        except httpx.HTTPError as e:
            raise ApiError("connection", f"connection dropped ({type(e).__name__}: {_one_line(e)})") from None
        if resp.status_code != 200:
            raise _status_error(resp)
        try:
            data = resp.json()
            return self.parse(data, params)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ApiError("malformed", f"malformed response ({type(e).__name__}: {_one_line(e)[:120]})", 200) from None

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _usage(n_in, n_out) -> dict:
    return {"prompt_tokens": int(n_in or 0), "completion_tokens": int(n_out or 0)}


class OpenAIProvider(Provider):
    """``POST {base_url}/chat/completions`` with ``Authorization: Bearer KEY`` (no header without a key)."""

    name, path = "openai", "chat/completions"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, messages, params) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": params["max_tokens"]}
        if params.get("do_sample"):
            body.update(temperature=params["temperature"], top_p=params["top_p"])
        else:
            body["temperature"] = 0
        if params.get("seed") is not None:
            body["seed"] = params["seed"]
        if params.get("top_logprobs"):
            body.update(logprobs=True, top_logprobs=params["top_logprobs"])
        return body

    def parse(self, data, params) -> dict:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            raise TypeError("message.content is not a string")
        usage = data.get("usage") or {}
        logprobs = None
        content = (choice.get("logprobs") or {}).get("content") if params.get("top_logprobs") else None
        if content:
            logprobs = [
                [
                    p["token"],
                    float(p["logprob"]),
                    p.get("bytes"),
                    [
                        [t["token"], float(t["logprob"]), t.get("bytes"), t.get("token_id")]
                        for t in p.get("top_logprobs") or []
                    ],
                    p.get("token_id"),
                ]
                for p in content
            ]
        reason = choice.get("finish_reason") or "stop"
        return {
            "text": text,
            "finish_reason": "stop" if reason == "eos" else reason,
            "usage": _usage(usage.get("prompt_tokens"), usage.get("completion_tokens")),
            "logprobs": logprobs,
        }


class AnthropicProvider(Provider):
    """``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``; no log-probabilities."""

    name, path = "anthropic", "v1/messages"
    version = "2023-06-01"

    def headers(self) -> dict:
        h = {"anthropic-version": self.version}
        if self.api_key:
            h["x-api-key"] = self.api_key
        return h

    def body(self, messages, params) -> dict:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body = {
            "model": self.model,
            "max_tokens": params["max_tokens"],
            "messages": [m for m in messages if m["role"] != "system"],
        }
        if system:
            body["system"] = system
        if params.get("do_sample"):
            body["temperature"] = params["temperature"]
            if params["top_p"] < 1:
                body["top_p"] = params["top_p"]
        else:
            body["temperature"] = 0
        return body

    def parse(self, data, params) -> dict:
        blocks = data["content"]
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        reason = data.get("stop_reason")
        finish = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", None: "stop"}.get(reason, reason)
        usage = data.get("usage") or {}
        return {
            "text": text,
            "finish_reason": finish,
            "usage": _usage(usage.get("input_tokens"), usage.get("output_tokens")),
            "logprobs": None,
        }


def resolve_api_key(provider: str, key_env: str | None, base_url: str | None) -> str | None:
    """The key from ``key_env`` (default ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY``).

    A missing key is an error when the variable was named explicitly or the endpoint is the
    provider's own; local servers (vLLM, Ollama, ``potstill serve``) usually need none.
    """
    env = key_env or PROVIDERS[provider]["key_env"]
    key = os.environ.get(env) or None
    official = (base_url or PROVIDERS[provider]["url"]).rstrip("/") == PROVIDERS[provider]["url"]
    if key is None and (key_env or official):
        raise UserError(f"the API key is missing: set the environment variable {env}", where=f"{provider} teacher")
    return key


def make_provider(
    provider: str, model: str, base_url: str | None, api_key: str | None, timeout: float, concurrency: int
) -> Provider:
    """A :class:`Provider` for ``provider`` ("openai" or "anthropic")."""
    cls = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}[provider]
    return cls(model, base_url, api_key, timeout, concurrency)


def preflight_error(p: Provider, err: ApiError, attempts: int, key_env: str | None) -> UserError:
    """The one clear line for a teacher endpoint that cannot serve the run."""
    env = key_env or PROVIDERS[p.name]["key_env"]
    if err.kind == "connection" and err.connect:
        return UserError(f"cannot reach the teacher API at {p.url}: {err} (check --base-url / teacher.base_url)")
    if err.kind == "auth":
        return UserError(f"the teacher API at {p.url} rejected the API key ({err}); check ${env}")
    if err.kind == "not_found":
        return UserError(
            f"model '{p.model}' not found at {p.url} ({err}); check the model name and the base URL "
            f"(OpenAI-compatible servers usually need it to end in /v1)"
        )
    if err.kind == "unavailable":
        return UserError(
            f"the teacher API at {p.url} stopped answering: {err}; the answers so far are cached, rerun to continue"
        )
    if err.kind == "bad_request":
        return UserError(f"the teacher API at {p.url} refused the request for model '{p.model}' ({err})")
    return UserError(f"the teacher API at {p.url} kept failing: {err} ({attempts} attempts)")
