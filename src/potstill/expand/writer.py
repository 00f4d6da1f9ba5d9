"""Writer-model rewrites of seed prompts (Self-Instruct / Evol-Instruct style): which seeds get which
instruction, the instruction records, the generate call, and cleaning the writer's answers.

The writer is run by :func:`potstill.teachers.generate.run_generate`, exactly like the teacher: a local
writer appends finished batches to ``work_dir/partial.jsonl``, an API writer commits every answer to
its SQLite cache, so an interrupted stage resumes without asking for a rewrite twice. A rewrite is
keyed by its seed prompt's id and the instruction's hash (:func:`instruction_sha`); the instruction
record's id is ``SEED_ID@INSTRUCTION_SHA``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from ..config import TeacherConfig
from ..data.dedup import normalise
from ..data.split import split_point
from ..errors import UserError
from ..io import read_jsonl, sha256_json
from ..teachers.generate import run_generate
from ..teachers.spec import parse_model
from .config import Instruction, WriterSettings

# (instruction records, out_dir, work_dir) -> generation records ({"id", "text", "finish_reason", ...})
WriterRunner = Callable[[list[dict], Path, Path], list[dict]]

_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`", "«": "»", "„": "“"}
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)?)\b.*[:!.]$", re.IGNORECASE)
_LIST = re.compile(r"^(?:[-*•]\s+|\d+[.)]\s+)")
_LABEL = re.compile(
    r"^(?:\*\*)?(?:(?:the\s+)?(?:paraphrased?|rewritten|reworded|revised|new|casual|specific|evolved|final)\s+)?"
    r"(?:version|question|prompt|request|message|query|rewrite|paraphrase|output|text|user)(?:\s*\d+)?"
    r"(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)


def seed_text(record: dict) -> str | None:
    """The content of a record's last user message (what every expansion changes), or None."""
    users = [m for m in record["messages"] if m["role"] == "user"]
    return users[-1]["content"] if users else None


def instruction_sha(ins: Instruction, system_prompt: str | None = None) -> str:
    """What a rewrite depends on besides its seed: the template, its method and the writer's system prompt."""
    return sha256_json({"template": ins.template, "method": ins.method, "system": system_prompt})[:16]


def seed_sha(text: str) -> str:
    return sha256_json(text)[:16]


def writer_jobs(cfg: WriterSettings, records: list[dict], seed: int) -> list[tuple[dict, Instruction, str]]:
    """``(seed record, instruction, instruction sha)`` for every rewrite asked for, in record order.

    A ``share`` of the records (seeded hash of the id) each get ``copies`` instructions (all by default),
    drawn without repeats by a generator seeded with the seed and the record id.
    """
    shas = {i.name: instruction_sha(i, cfg.system_prompt) for i in cfg.instructions}
    jobs = []
    for r in records:
        if seed_text(r) is None or split_point(f"writer\x00{r['id']}", seed) >= cfg.share:
            continue
        chosen = list(cfg.instructions)
        if cfg.copies is not None and cfg.copies < len(chosen):
            rng = random.Random(sha256_json(["writer", seed, r["id"]]))
            chosen = sorted(rng.sample(chosen, cfg.copies), key=cfg.instructions.index)
        jobs += [(r, ins, shas[ins.name]) for ins in chosen]
    return jobs


def instruction_record(record: dict, ins: Instruction, sha: str, system_prompt: str | None) -> dict:
    """The record the writer answers: the instruction with the seed's last user message in place of {prompt}."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": ins.template.replace("{prompt}", seed_text(record))})
    return {"id": f"{record['id']}@{sha}", "messages": messages}


def clean_rewrite(raw: str) -> tuple[str, bool]:
    """The rewrite in a writer's answer, and whether more text followed it.

    Lead-in lines ("Sure! Here is a paraphrase:") and label-only lines are skipped; the first
    remaining line is kept, without a list marker, a label ("Paraphrase:", "Rewritten message:")
    and wrapping quotes.
    """
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    while lines and (_PREAMBLE.match(lines[0]) or not _LABEL.sub("", _LIST.sub("", lines[0]), count=1).strip()):
        lines.pop(0)
    if not lines:
        return "", False
    text = _LABEL.sub("", _LIST.sub("", lines[0]), count=1).strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text, len(lines) > 1


def reject_reason(
    text: str, more: bool, finish_reason: str | None, seed: str, ins: Instruction, cfg: WriterSettings
) -> str | None:
    """Why a cleaned rewrite is dropped (empty, truncated, echo, overlong), or None to keep it."""
    if len(text) < cfg.min_chars:
        return "empty"
    if finish_reason == "length" and not more:
        return "truncated"
    key = normalise({"messages": [{"role": "user", "content": text}]})
    stem = normalise({"messages": [{"role": "user", "content": ins.template.split("{prompt}")[0]}]})[:40]
    if key == normalise({"messages": [{"role": "user", "content": seed}]}) or (stem and key.startswith(stem)):
        return "echo"
    if len(text) > cfg.max_chars or len(text) > cfg.max_length_ratio * max(len(seed), 40):
        return "overlong"
    return None


def writer_spec(cfg: WriterSettings, base_dir: str | Path = "."):
    """The writer's model as a :class:`~potstill.teachers.spec.ModelSpec` (paths against ``base_dir``)."""
    return parse_model(
        cfg.model,
        lambda p: (Path(base_dir) / Path(p).expanduser()).resolve(),
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
        where="expand.writer.model",
    )


def teacher_config(cfg: WriterSettings, engine: dict | None = None):
    """The writer's settings as a :class:`potstill.config.TeacherConfig` (what ``run_generate`` takes);
    ``engine`` adds other teacher settings (e.g. rpm, timeout_s, max_attempts, backoff_base_s)."""

    try:
        return TeacherConfig(
            model=cfg.model,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            dtype=cfg.dtype,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            max_cost=cfg.max_cost,
            max_failed_share=1.0,  # a rewrite that failed is only missing: counted as writer.unanswered, rerun retries
            **(engine or {}),
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"expand.writer.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def writer_identity(cfg: WriterSettings, base_dir: str | Path = ".") -> dict:
    """What stands for the writer in hashes and provenance: its name and a hash of its files (local) or of
    provider, model and endpoint (API)."""
    spec = writer_spec(cfg, base_dir)
    if spec.is_local and not spec.path.exists():
        raise UserError("writer model not found", str(spec.path))
    return {"model": cfg.model, **({"base_url": cfg.base_url} if spec.is_api else {}), "sha256": spec.identity()}


def make_writer_runner(
    cfg: WriterSettings,
    base_dir: str | Path = ".",
    cache_path: Path | None = None,
    prices: tuple[float | None, float | None] = (None, None),
    seed: int = 0,
    engine: dict | None = None,
) -> WriterRunner:
    """A runner that answers instruction records with ``cfg.model`` through ``run_generate``.

    ``base_dir`` resolves a local model path; ``cache_path`` is an API writer's answer cache (default
    ``work_dir/cache.sqlite``); ``prices`` its USD per million input/output tokens (for ``max_cost``);
    ``engine`` more :class:`~potstill.config.TeacherConfig` settings of an API writer (rate limits, retries).
    """

    def run(records: list[dict], out_dir: Path, work_dir: Path) -> list[dict]:
        if not cfg.model:
            raise UserError(
                f"{len(records)} rewrites are missing from expand.writer.cache_file and no "
                "expand.writer.model is set to write them"
            )
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        run_generate(
            teacher_config(cfg, engine),
            writer_spec(cfg, base_dir),
            records,
            Path(out_dir),
            Path(work_dir),
            seed,
            prices=prices,
            cache_path=cache_path or Path(work_dir) / "cache.sqlite",
        )
        return read_jsonl(Path(out_dir) / "generations.jsonl")

    return run
