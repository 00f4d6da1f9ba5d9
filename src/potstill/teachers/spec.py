"""One typed value for a model spec (``teacher.model``, ``eval.judge.model``, ``serve --fallback``).

The string a user writes is parsed once, here, into a :class:`ModelSpec`; everything downstream
reads its fields and never looks at the string again:

* ``DIR`` - a local Hugging Face model directory (kind ``local``);
* ``FILE.gguf`` - a llama.cpp / Ollama / LM Studio GGUF file, converted once to a cached HF
  directory (kind ``gguf``; :func:`potstill.models.load_model` takes the file too);
* ``vllm:DIR`` - the same local directory run by vLLM (kind ``vllm``);
* ``openai:MODEL`` / ``anthropic:MODEL`` - an API model (kind = the provider).

A new kind of model is one :class:`Kind` added to :data:`KINDS` (its prefix or suffix and how it
is parsed) plus, if it generates differently, its backend in :mod:`potstill.teachers.generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..io import sha256_json
from .api import teacher_identity

API_PROVIDERS = ("openai", "anthropic")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what it is, where it is, and how it is named in hashes, terms and reports.

    ``path``: the local directory or file (None for an API model); ``name``: the API model name, or
    the path as written; ``provider``: the API provider (None for a local model); ``base_url`` /
    ``api_key_env``: an API model's endpoint and key variable (None: the provider's default).
    """

    kind: str
    raw: str
    name: str
    path: Path | None = None
    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_api(self) -> bool:
        return self.provider is not None

    @property
    def is_local(self) -> bool:
        """Weights on this machine (a directory or a GGUF file), run by transformers or vLLM."""
        return self.path is not None

    def model_dir(self) -> Path | None:
        """The HF model directory to load (a GGUF file's cached conversion); None for an API model."""
        if self.path is None:
            return None
        if self.kind == "gguf":
            from ..gguf import gguf_model_dir  # defers the gguf reader and a first-time conversion

            return gguf_model_dir(self.path)
        return self.path

    def identity(self) -> str:
        """What stands for this model in stage hashes: its files' hash, or an API's provider/model/endpoint."""
        if self.is_api:
            return teacher_identity(self.provider, self.name, self.base_url)
        if self.path is None:  # a kind without files (e.g. a test's toy kind): its kind and name
            return sha256_json({"kind": self.kind, "name": self.name})
        from ..models import model_hash  # defers torch

        return model_hash(self.path)

    @property
    def display(self) -> str:
        """How reports, model cards and the terms gate name it: ``provider:model`` or the path."""
        if self.is_api:
            return f"{self.provider}:{self.name}"
        return str(self.path) if self.path is not None else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Kind:
    """A kind of model spec: recognised by a ``prefix:`` or a file ``suffix``; ``parse(rest, resolve)``
    returns ``(name, path)`` for it (``resolve`` makes a config-relative path absolute)."""

    name: str
    parse: Callable[[str, Callable[[str], Path]], tuple[str, Path | None]]
    prefix: str | None = None
    suffix: str | None = None
    api: bool = False


def _api(rest: str, resolve) -> tuple[str, Path | None]:
    if not rest.strip():
        raise ValueError("names no model")
    return rest.strip(), None


def _path(rest: str, resolve) -> tuple[str, Path | None]:
    if not rest.strip():
        raise ValueError("names no model directory")
    return rest, resolve(rest)


KINDS: list[Kind] = [
    *(Kind(p, _api, prefix=p, api=True) for p in API_PROVIDERS),
    Kind("vllm", _path, prefix="vllm"),
    Kind("gguf", _path, suffix=".gguf"),
    Kind("local", _path),  # the fallback: a model directory
]


def _kind_of(text: str) -> tuple[Kind, str]:
    prefix, sep, rest = text.partition(":")
    for kind in KINDS:
        if kind.prefix and sep and prefix == kind.prefix:
            return kind, rest
    for kind in KINDS:
        if kind.suffix and text.lower().endswith(kind.suffix):
            return kind, text
    return KINDS[-1], text


def parse_model(
    text: str,
    resolve: Callable[[str], Path] | None = None,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    where: str = "teacher.model",
) -> ModelSpec:
    """Parse a model spec once; a one-line :class:`UserError` naming ``where`` when it is malformed.

    ``base_url`` and ``api_key_env`` belong to API models only (an error otherwise).
    """
    text = str(text)
    resolve = resolve or (lambda p: Path(p).expanduser().resolve())
    kind, rest = _kind_of(text)
    try:
        name, path = kind.parse(rest, resolve)
    except ValueError as e:
        raise UserError(
            f"'{text}' {e} (expected e.g. '{kind.prefix or 'DIR'}:MODEL')" if kind.api else f"'{text}' {e}", where=where
        ) from None
    if base_url is not None and not kind.api:
        raise UserError(
            f"base_url is only for API models ('openai:MODEL' or 'anthropic:MODEL'), not '{text}'",
            where=where.rsplit(".", 1)[0] + ".base_url",
        )
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UserError(
            f"base_url must start with http:// or https:// (got {base_url!r})",
            where=where.rsplit(".", 1)[0] + ".base_url",
        )
    return ModelSpec(
        kind=kind.name,
        raw=text,
        name=name,
        path=path,
        provider=kind.name if kind.api else None,
        base_url=base_url if kind.api else None,
        api_key_env=api_key_env if kind.api else None,
    )


def teacher_spec(teacher_cfg, resolve: Callable[[str], Path]) -> ModelSpec:
    """The run's teacher (the ``teacher`` config section) as a :class:`ModelSpec`."""
    return parse_model(teacher_cfg.model, resolve, base_url=teacher_cfg.base_url, api_key_env=teacher_cfg.api_key_env)


def with_endpoint(spec: ModelSpec, base_url: str | None, api_key_env: str | None) -> ModelSpec:
    """The same spec with another endpoint/key (API models only)."""
    return replace(spec, base_url=base_url, api_key_env=api_key_env) if spec.is_api else spec
