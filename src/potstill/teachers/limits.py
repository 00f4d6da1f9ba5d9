"""The teacher's context window: how long a prompt may be so that the answer still fits.

A local teacher (a model directory, or ``vllm:DIR``) takes prompts of at most its context
(``max_position_embeddings`` in ``config.json``, or ``teacher.vllm.max_model_len`` when set) less
``teacher.max_new_tokens``. An API teacher's context is not known here: no limit unless
``prompts.max_prompt_tokens`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.length import PromptLimit
from ..errors import UserError
from .spec import ModelSpec, teacher_spec

if TYPE_CHECKING:
    from ..config import RunConfig, TeacherConfig

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")


def model_context(path: str | Path) -> int | None:
    """The context length stated in a model directory's ``config.json`` (also a multimodal model's
    ``text_config``); None when the file or the key is missing."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (cfg, cfg.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = section.get(key) if isinstance(section, dict) else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def context_limit(teacher: TeacherConfig, spec: ModelSpec, teacher_dir: Path | None = None) -> tuple[int | None, str]:
    """The longest prompt the teacher can answer in full, and a phrase saying where it comes from.

    ``spec``: the teacher; ``teacher_dir``: its model directory (default: the spec's). None when the
    context is unknown (an API teacher, a directory that is not a model yet, a config without a context key).
    A context no longer than ``max_new_tokens`` is a :class:`UserError`.
    """
    if spec.is_api:
        return None, "an API teacher: no limit unless prompts.max_prompt_tokens is set"
    teacher_dir = teacher_dir or spec.model_dir()
    if teacher_dir is None:
        return None, "a teacher without a model directory: no limit unless prompts.max_prompt_tokens is set"
    vllm_len = teacher.vllm.max_model_len if spec.kind == "vllm" else None
    context = vllm_len or model_context(teacher_dir)
    if context is None:
        return None, f"no context length in {teacher_dir / 'config.json'}"
    source = "teacher.vllm.max_model_len" if vllm_len else "max_position_embeddings"
    if context <= teacher.max_new_tokens:
        raise UserError(
            f"teacher.max_new_tokens {teacher.max_new_tokens} leaves no room for a prompt in the "
            f"teacher's context of {context} tokens ({source}); lower teacher.max_new_tokens",
            str(teacher_dir),
        )
    return context - teacher.max_new_tokens, (
        f"the teacher's context {context} ({source}) less teacher.max_new_tokens {teacher.max_new_tokens}"
    )


def teacher_context_limit(cfg: RunConfig) -> int | None:
    """The run's local teacher's context less ``teacher.max_new_tokens``; None for an API teacher."""
    return context_limit(cfg.teacher, teacher_spec(cfg.teacher, cfg.resolve))[0]


def prompt_limit(cfg: RunConfig, spec: ModelSpec | None = None) -> PromptLimit:
    """The prompts stage's length limit for the run ``cfg``: ``prompts.max_prompt_tokens``, else the
    teacher's :func:`context_limit`; counted with the local teacher's tokenizer (an API teacher's
    ``teacher.tokenizer``), else estimated."""
    spec = spec or teacher_spec(cfg.teacher, cfg.resolve)
    teacher_dir = spec.path if spec.kind in ("local", "vllm") else None  # a GGUF is converted by the preflight
    if teacher_dir is not None and not (teacher_dir / "config.json").is_file():
        teacher_dir = None  # not a model (yet): the run's preflight says so; counted by estimate meanwhile
    if teacher_dir is not None:
        tokenizer = str(teacher_dir)
    else:
        tokenizer = str(cfg.resolve(cfg.teacher.tokenizer)) if cfg.teacher.tokenizer else None
    if cfg.prompts.max_prompt_tokens is not None:
        return PromptLimit(cfg.prompts.max_prompt_tokens, cfg.prompts.too_long, tokenizer)
    limit, why = context_limit(cfg.teacher, spec, teacher_dir) if teacher_dir is not None else (None, "")
    return PromptLimit(limit, cfg.prompts.too_long, tokenizer, why)
