"""Request and response bodies of the OpenAI-compatible chat API, and :class:`APIError`.

Requests are validated strictly where it matters (types, ranges, message roles) and leniently elsewhere:
unknown fields (``user``, ``presence_penalty``, ...) are accepted and ignored, as OpenAI clients send them.
Message roles are ``system``, ``user``, ``assistant`` and ``developer`` (sent to the chat template as
``system``); ``tool``/``function`` messages are refused with 400 like any unknown role, as this server
has no tool calling (it never returns ``tool_calls``, so no conversation with it can hold a tool result).
Responses follow OpenAI's shapes plus two extension fields the official client ignores:
``choices[i].token_ids`` (the generated ids) and ``token_id`` on every logprob entry.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

MAX_TOP_LOGPROBS = 100
MAX_STOP_STRINGS = 8
Role = Literal["system", "user", "assistant", "developer"]
ROLES = get_args(Role)
INT64 = 2**63


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with an HTTP status."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
    }

    def __init__(
        self, status: int, message: str, code: str | None = None, type: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or self.TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    """A ``{"type": "text", "text": ...}`` content part (the only kind a text model can take)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"] = "text"
    text: str = ""

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, v):
        if v != "text":
            raise PydanticCustomError(
                "invalid_value", "only text content parts are supported, got {got}", {"got": repr(v)[:40]}
            )
        return v


class ChatMessage(BaseModel):
    """One message: a role of :data:`ROLES`; ``content`` a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")
    role: Role
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, v):
        if v in ROLES:
            return v
        if v in ("tool", "function"):
            raise PydanticCustomError(
                "invalid_value",
                "'{role}' messages are not supported: this server has no tool calling. Supported roles: {roles}.",
                {"role": v, "roles": ", ".join(ROLES)},
            )
        raise PydanticCustomError(
            "invalid_value",
            "Invalid value: {got}. Supported values are: {roles}.",
            {"got": repr(v)[:40], "roles": ", ".join(repr(r) for r in ROLES)},
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (the subset a local model can honour)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def stops(self) -> list[str]:
        """Stop strings as a list."""
        return list(self.stop or [])

    def token_limit(self) -> int | None:
        """Requested completion length (``max_completion_tokens`` wins over ``max_tokens``)."""
        return self.max_completion_tokens or self.max_tokens

    def k(self) -> int:
        """How many top logprobs per token to return (0 when ``logprobs`` is off)."""
        return (self.top_logprobs or 0) if self.logprobs else 0

    def wire_messages(self) -> list[dict]:
        """Messages as ``[{"role", "content"}]`` for a chat template (``developer`` becomes ``system``)."""
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


# ---- responses (dumped with model_dump(); shapes match openai.types.chat) ----


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    token_id: int  # extension


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None  # extension


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "potstill"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer (see :class:`APIError`)."""

    error: ErrorDetail
