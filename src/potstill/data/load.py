"""Read prompt sources (JSONL, CSV, Parquet, a local HF dataset) into prompt records.

A record is ``{"id", "messages", "category", "meta"}``; ``meta`` holds every other column of
the source row unchanged, so later stages (graders, scorers) can use it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..io import iter_jsonl, sha256_json

ROLES = ("system", "user", "assistant")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class SourceSpec(BaseModel):
    """One file or saved HF dataset of prompts."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1, description="File, or directory saved with `save_to_disk`; relative to the config file."
    )
    split: str | None = Field(None, description="Split to read from a saved `DatasetDict` (HF format only).")
    format: Literal["auto", "jsonl", "csv", "parquet", "hf"] = Field(
        "auto", description="File format; `auto` picks it from the extension (a directory is `hf`)."
    )
    prompt_field: str = Field("prompt", description="Column holding a plain-text prompt.")
    messages_field: str = Field("messages", description="Column holding a chat as a list of {role, content}.")
    id_field: str | None = Field(
        "id", description="Column holding a unique id; missing ids are derived from the content."
    )
    category_field: str | None = Field("category", description="Column holding the prompt's category, if any.")
    system_prompt: str | None = Field(None, description="System message prepended to chats that do not start with one.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows from the source.")
    train_only: bool = Field(
        False,
        description="Every row goes to the train split, none to validation/test (e.g. a "
        "gateway's fallback log: unlabeled production prompts for the next round).",
    )


def resolve_format(spec: SourceSpec, path: Path) -> str:
    """Return the concrete format of ``spec`` (``auto`` resolved from the path)."""
    if spec.format != "auto":
        return spec.format
    if path.is_dir():
        return "hf"
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot tell the format from the extension {path.suffix!r}; set format: jsonl, csv, parquet or hf",
            str(path),
        )
    return fmt


def _not_utf8(path: Path, e: UnicodeDecodeError) -> UserError:
    with open(path, "rb") as f:
        head = f.read(2)
    if head in (b"\xff\xfe", b"\xfe\xff"):
        return UserError(
            "UTF-16 text (a spreadsheet's 'Unicode text' export?); save it as UTF-8 (e.g. 'CSV UTF-8')", str(path)
        )
    return UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path))


def _rows_jsonl(path: Path):
    try:
        for lineno, row in iter_jsonl(path):
            yield f"line {lineno}", row
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None


def _rows_csv(path: Path):
    csv.field_size_limit(2**31 - 1)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            header, start = None, 1
            for values in reader:
                where, start = f"line {start}", reader.line_num + 1
                if not values:
                    continue
                if header is None:
                    header = values
                    continue
                if len(values) != len(header):
                    raise UserError(f"{where}: {len(values)} fields but the header has {len(header)}", str(path))
                yield where, dict(zip(header, values))
    except csv.Error as e:
        raise UserError(f"line {reader.line_num}: CSV parse error ({e})", str(path)) from None
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None


def _rows_parquet(path: Path):
    import pyarrow as pa  # defers pyarrow (Parquet only)
    import pyarrow.parquet as pq  # defers pyarrow (Parquet only)

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"unreadable Parquet file ({e})", str(path)) from None
    return ((f"row {i}", row) for i, row in enumerate(table.to_pylist(), 1))


def _rows_hf(path: Path, split: str | None):
    import datasets  # defers datasets (HF datasets only)

    if not path.is_dir():
        raise UserError("format hf needs a directory saved with save_to_disk", str(path))
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"not a dataset saved with save_to_disk ({e})", str(path)) from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) != 1:
            raise UserError(f"dataset has splits {names}; set split: to one of them", str(path))
        if split is not None and split not in ds:
            raise UserError(f"no split {split!r}; the dataset has {names}", str(path))
        ds = ds[split or names[0]]
    elif split is not None and str(ds.split) != split:
        raise UserError(f"split {split!r} given but the dataset is a single split ({ds.split})", str(path))
    return ((f"row {i}", row) for i, row in enumerate(ds, 1))


def one_line(value: Any) -> str:
    """``str(value)`` with line breaks escaped, for error messages (one line each)."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _messages(value: Any, where: str, path: Path, field: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError, a > 4300-digit integer, nesting too deep
            raise UserError(
                f"{where}: field {field!r} is a string but not a JSON list of messages", str(path)
            ) from None
    if not isinstance(value, list):
        raise UserError(
            f"{where}: field {field!r} must be a list of {{role, content}}, got {type(value).__name__}", str(path)
        )
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ROLES):
            raise UserError(
                f"{where}: field {field!r} item {i} must be {{role: system|user|assistant, "
                f"content: string}}, got {one_line(m)[:80]}",
                str(path),
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _json_safe(meta: dict) -> dict:
    try:
        json.dumps(meta)
        return meta
    except (TypeError, ValueError):
        return json.loads(json.dumps(meta, default=str))


def unique_id(rid: str, taken) -> str:
    """``rid``, or ``rid-2``, ``rid-3``... whichever is first not in ``taken``."""
    n, out = 2, rid
    while out in taken:
        out, n = f"{rid}-{n}", n + 1
    return out


def read_source(spec: SourceSpec, base_dir: str | Path) -> tuple[list[dict], list[tuple[str, str, bool]]]:
    """Load ``spec`` into records, with a ``(file, "line N" | "row N", id_was_generated)`` origin each.

    Empty prompts are kept here (see :func:`drop_empty`). A duplicate given id is a
    :class:`UserError`; a duplicate generated id (same content) gets a ``-2``... suffix.
    """
    path = Path(base_dir, spec.path)
    if not path.exists():
        raise UserError("file not found", str(path))
    fmt = resolve_format(spec, path)
    if spec.split is not None and fmt != "hf":
        raise UserError("split: is only for HF datasets saved with save_to_disk", str(path))
    if fmt != "hf" and path.is_dir():
        raise UserError(f"is a directory, not a {fmt} file", str(path))
    rows = {
        "jsonl": lambda: _rows_jsonl(path),
        "csv": lambda: _rows_csv(path),
        "parquet": lambda: _rows_parquet(path),
        "hf": lambda: _rows_hf(path, spec.split),
    }[fmt]()
    name = path.stem if path.is_file() else path.name
    name += f"-{spec.split}" if spec.split else ""
    used = {spec.prompt_field, spec.messages_field, spec.id_field, spec.category_field}
    records, origins, seen = [], [], {}
    for where, row in rows:
        if spec.limit is not None and len(records) >= spec.limit:
            break
        record, generated = _record(row, where, path, spec, name, used)
        if record["id"] in seen:
            if not generated:
                raise UserError(f"{where}: duplicate id {record['id']!r} (first at {seen[record['id']]})", str(path))
            record["id"] = unique_id(record["id"], seen)
        seen[record["id"]] = where
        records.append(record)
        origins.append((str(path), where, generated))
    return records, origins


def _record(row: dict, where: str, path: Path, spec: SourceSpec, name: str, used: set) -> tuple[dict, bool]:
    has_msgs, has_prompt = spec.messages_field in row, spec.prompt_field in row
    if not (has_msgs or has_prompt):
        cols = ", ".join(map(one_line, row)) or "none"
        raise UserError(
            f"{where}: no {spec.prompt_field!r} or {spec.messages_field!r} field; the row has: {cols}", str(path)
        )
    messages = []
    if has_msgs and row[spec.messages_field] not in (None, ""):
        messages = _messages(row[spec.messages_field], where, path, spec.messages_field)
    if not messages:  # no messages, or an empty list (also as the CSV text "[]"): the prompt field, if any
        prompt = row.get(spec.prompt_field)
        if prompt is not None and not isinstance(prompt, str):
            raise UserError(
                f"{where}: field {spec.prompt_field!r} must be a string, got {type(prompt).__name__}", str(path)
            )
        messages = [{"role": "user", "content": prompt or ""}]
    raw_id = row.get(spec.id_field) if spec.id_field else None
    generated = raw_id is None or str(raw_id).strip() == ""
    rid = f"{name}-{sha256_json(messages)[:16]}" if generated else str(raw_id)
    if spec.system_prompt is not None and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    cat = row.get(spec.category_field) if spec.category_field else None
    meta = _json_safe({k: v for k, v in row.items() if k not in used})
    record = {"id": rid, "messages": messages, "category": None if cat in (None, "") else str(cat), "meta": meta}
    try:  # JSON's "\ud800" escapes make strings that no UTF-8 file can hold
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"{where}: text that is not valid Unicode (a lone surrogate escape such as \\ud800)", str(path)
        ) from None
    return record, generated


def load_source(spec: SourceSpec, base_dir: str | Path) -> list[dict]:
    """Load the prompt records of one source (paths relative to ``base_dir``).

    Empty prompts are included so the caller can count them; drop them with :func:`drop_empty`.
    """
    return read_source(spec, base_dir)[0]


def user_text(record: dict) -> str:
    """All user turns of a record, joined by blank lines."""
    return "\n\n".join(m["content"] for m in record["messages"] if m["role"] == "user")


def is_empty(record: dict) -> bool:
    """True when the record has no non-whitespace user content."""
    return not user_text(record).strip()


def drop_empty(records: list[dict]) -> tuple[list[dict], int]:
    """Return the non-empty records and how many empty ones were dropped."""
    kept = [r for r in records if not is_empty(r)]
    return kept, len(records) - len(kept)
