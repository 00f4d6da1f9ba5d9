"""Property tests of the prompt loaders: whatever a .jsonl / .csv / .json file holds, loading it gives
valid prompt records or raises one :class:`UserError` (one line), never another exception."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potstill.data import PromptsConfig, run_prompts
from potstill.data.load import ROLES, SourceSpec, load_source
from potstill.errors import UserError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOM = b"\xef\xbb\xbf"

# Text with everything JSON can carry: control characters, line separators, lone surrogates (as \ud800 escapes).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from([*ROLES, "tool"]) | VALUES, "content": VALUES})
# lines on which Python's json module raises other exceptions than JSONDecodeError
RAW = [
    '{"prompt": "x", "id": 1' + "0" * 5000 + "}",
    "[" * 100_000,
    '{"prompt": ' * 3000,
    '{"messages": "' + "[" * 100_000 + '"}',
    '{"prompt": NaN, "id": Infinity}',
]
ROWS = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from(["a", "b", "", " "]) | VALUES,
            "prompt": TEXT | VALUES,
            "messages": st.lists(MESSAGE, max_size=3) | VALUES,
            "category": VALUES,
            "extra": VALUES,
        },
    )
    | VALUES
)


def check_records(records: list[dict]) -> None:
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        assert set(r) == {"id", "messages", "category", "meta"}
        assert isinstance(r["id"], str) and isinstance(r["meta"], dict)
        assert r["category"] is None or isinstance(r["category"], str)
        assert r["messages"] and all(
            set(m) == {"role", "content"} and m["role"] in ROLES and isinstance(m["content"], str)
            for m in r["messages"]
        )
        json.dumps(r, ensure_ascii=False).encode("utf-8")  # writable as UTF-8 JSONL by the prompts stage


def load_bytes(data: bytes, name: str, **spec) -> None:
    """Load ``data`` saved as ``name``: valid records, or one one-line UserError naming the file."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / name).write_bytes(data)
        try:
            records = load_source(SourceSpec(path=name, **spec), d)
        except UserError as e:
            assert "\n" not in str(e) and name in str(e), str(e)
            return
        check_records(records)


def csv_bytes(rows: list[dict], header: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([v if isinstance(v, str) else json.dumps(v) for v in (r.get(h, "") for h in header)])
    return buf.getvalue().encode("utf-8", "surrogatepass")


@SETTINGS
@given(data=st.binary(max_size=300), name=st.sampled_from(["p.jsonl", "p.csv", "p.json"]), bom=st.booleans())
def test_arbitrary_bytes(data, name, bom):
    load_bytes((BOM if bom else b"") + data, name)


@SETTINGS
@given(rows=st.lists(ROWS | st.sampled_from(RAW), max_size=5), bom=st.booleans(), ascii_only=st.booleans())
def test_arbitrary_json_lines(rows, bom, ascii_only):
    text = "".join((r if r in RAW else json.dumps(r, ensure_ascii=ascii_only)) + "\n" for r in rows)
    load_bytes((BOM if bom else b"") + text.encode("utf-8", "surrogatepass"), "p.jsonl")


@SETTINGS
@given(value=VALUES | st.lists(ROWS, max_size=4), fmt=st.sampled_from(["auto", "jsonl"]))
def test_arbitrary_json_document(value, fmt):
    load_bytes(json.dumps(value, indent=1 if isinstance(value, list) else None).encode("utf-8"), "p.json", format=fmt)


@SETTINGS
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["id", "prompt", "messages", "category", "x"]), TEXT | VALUES), max_size=5
    ),
    header=st.lists(st.sampled_from(["id", "prompt", "messages", "category", "x"]) | TEXT, max_size=4),
    bom=st.booleans(),
)
def test_arbitrary_csv(rows, header, bom):
    load_bytes((BOM if bom else b"") + csv_bytes(rows, header), "p.csv")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROWS, max_size=6))
def test_prompts_stage_on_arbitrary_rows(rows):
    """Past the loader too: empty, duplicate and odd prompts end in a stage or in one UserError."""
    with tempfile.TemporaryDirectory() as d:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (Path(d) / "p.jsonl").write_text(text, encoding="utf-8")
        cfg = PromptsConfig(sources=[{"path": "p.jsonl"}], validation=0.0, test_fraction=0.0, max_prompt_tokens=40)
        try:
            stats = run_prompts(cfg, Path(d), Path(d) / "out")
        except UserError as e:
            assert "\n" not in str(e)
            return
        check_records([json.loads(ln) for ln in (Path(d) / "out" / "train.jsonl").read_text("utf-8").splitlines()])
        assert stats["loaded"] == stats["train"] + sum(stats["dropped"].values())


def test_bom_and_utf16_examples(tmp_path):
    """The cases found by hand that the properties cover: a BOM is accepted, UTF-16 named."""
    (tmp_path / "a.jsonl").write_bytes(BOM + b'{"prompt": "hi"}\n' + BOM + b'{"prompt": "yo"}\n')
    assert [r["messages"][0]["content"] for r in load_source(SourceSpec(path="a.jsonl"), tmp_path)] == ["hi", "yo"]
    (tmp_path / "u.csv").write_bytes("prompt\nhi\n".encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16 text"):
        load_source(SourceSpec(path="u.csv"), tmp_path)


def test_an_empty_messages_list_falls_back_to_the_prompt_field(tmp_path):
    """Found by the CSV property: the text "[]" in a messages column is no messages, so the prompt is used."""
    (tmp_path / "m.csv").write_text("prompt,messages\nhello,[]\n,[]\n", "utf-8")
    records = load_source(SourceSpec(path="m.csv"), tmp_path)
    assert [r["messages"] for r in records] == [
        [{"role": "user", "content": "hello"}],
        [{"role": "user", "content": ""}],
    ]
    (tmp_path / "m.jsonl").write_text('{"messages": [], "prompt": "yo"}\n', "utf-8")
    assert load_source(SourceSpec(path="m.jsonl"), tmp_path)[0]["messages"] == [{"role": "user", "content": "yo"}]
