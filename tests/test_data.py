"""Tests of the prompts stage (potstill.data): loading, dedup, splits and the stage itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from potstill.data import (
    PromptsConfig,
    SourceSpec,
    assign_split,
    dedup,
    drop_empty,
    load_source,
    make_splits,
    run_prompts,
)
from potstill.errors import UserError


def write_jsonl(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(tmp_path: Path, path: str, **kw) -> list[dict]:
    return load_source(SourceSpec(path=path, **kw), tmp_path)


def user_error(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def words(n: int, offset: int = 0) -> str:
    vocab = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
        "quebec",
        "romeo",
        "sierra",
        "tango",
    ]
    return " ".join(f"{vocab[(i * 7 + offset) % 20]}{(i + offset) % 13}" for i in range(n))


# ---------------------------------------------------------------- loading


def test_jsonl_prompts_messages_meta_and_system_prompt(tmp_path):
    write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "What is 2+2?", "category": "math", "facts": ["4"], "level": 3},
            {"id": "b", "messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "Hi"}]},
            {"id": "c", "messages": [{"role": "user", "content": "Hey"}], "category": None},
        ],
        blank_after=1,
    )
    recs = load(tmp_path, "p.jsonl", system_prompt="Be brief.")
    assert recs[0] == {
        "id": "a",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        "category": "math",
        "meta": {"facts": ["4"], "level": 3},
    }
    assert recs[1]["messages"][0] == {"role": "system", "content": "own"}  # own system prompt kept
    assert len(recs[1]["messages"]) == 2
    assert recs[2]["messages"][0]["content"] == "Be brief." and recs[2]["category"] is None
    assert load(tmp_path, "p.jsonl")[0]["messages"] == [{"role": "user", "content": "What is 2+2?"}]


def test_csv_multiline_category_and_json_messages(tmp_path):
    (tmp_path / "p.csv").write_text(
        'id,prompt,category,source\n1,"two\nlines",qa,web\n2,plain,,book\n3,,x,"chat"\n', encoding="utf-8"
    )
    recs = load(tmp_path, "p.csv")
    assert [r["id"] for r in recs] == ["1", "2", "3"]
    assert recs[0]["messages"] == [{"role": "user", "content": "two\nlines"}]
    assert recs[0]["meta"] == {"source": "web"} and recs[1]["category"] is None
    kept, n_empty = drop_empty(recs)
    assert [r["id"] for r in kept] == ["1", "2"] and n_empty == 1
    msgs = json.dumps([{"role": "user", "content": "hi"}]).replace('"', '""')
    (tmp_path / "m.csv").write_text(f'messages\n"{msgs}"\n', encoding="utf-8")
    assert load(tmp_path, "m.csv")[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "id": [10, 11],
                "messages": [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
                "facts": [["f1"], []],
            }
        ),
        tmp_path / "p.parquet",
    )
    recs = load(tmp_path, "p.parquet")
    assert [r["id"] for r in recs] == ["10", "11"]
    assert recs[0]["messages"] == [{"role": "user", "content": "q1"}]
    assert recs[0]["meta"] == {"facts": ["f1"]} and recs[1]["meta"] == {"facts": []}


def test_hf_dataset_and_datasetdict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"prompt": ["x", "y"], "answer": ["1", "2"]})
    ds.save_to_disk(str(tmp_path / "single"))
    recs = load(tmp_path, "single")
    assert [r["messages"][0]["content"] for r in recs] == ["x", "y"]
    assert recs[0]["meta"] == {"answer": "1"} and recs[0]["id"].startswith("single-")
    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_dict({"prompt": ["z"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    test = load(tmp_path, "dd", split="test")
    assert [r["messages"][0]["content"] for r in test] == ["z"] and test[0]["id"].startswith("dd-test-")
    msg = user_error(load, tmp_path, "dd")
    assert "dd" in msg and "split" in msg and "train" in msg
    assert "no split 'dev'" in user_error(load, tmp_path, "dd", split="dev")
    (tmp_path / "notads").mkdir()
    assert "save_to_disk" in user_error(load, tmp_path, "notads")


def test_custom_field_names_and_generated_ids(tmp_path):
    write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"qid": "q1", "question": "Why?", "topic": "t", "prompt": "ignored column"},
            {"chat": [{"role": "user", "content": "Hello"}], "topic": "u"},
            {"chat": [{"role": "user", "content": "Hello"}]},
        ],
    )
    recs = load(
        tmp_path, "c.jsonl", prompt_field="question", messages_field="chat", id_field="qid", category_field="topic"
    )
    assert recs[0]["id"] == "q1" and recs[0]["category"] == "t"
    assert recs[0]["messages"] == [{"role": "user", "content": "Why?"}]
    assert recs[0]["meta"] == {"prompt": "ignored column"}
    assert recs[1]["id"].startswith("c-") and recs[2]["id"] == recs[1]["id"] + "-2"
    assert (
        load(
            tmp_path, "c.jsonl", prompt_field="question", messages_field="chat", id_field="qid", category_field="topic"
        )[1]["id"]
        == recs[1]["id"]
    )  # stable
    no_ids = load(tmp_path, "c.jsonl", prompt_field="question", messages_field="chat", id_field=None)
    assert no_ids[0]["id"].startswith("c-") and no_ids[0]["meta"]["qid"] == "q1"
    assert len(load(tmp_path, "c.jsonl", prompt_field="question", messages_field="chat", limit=2)) == 2


def test_source_spec_rejects_unknown_keys():
    with pytest.raises(ValidationError):
        SourceSpec(path="x.jsonl", promt_field="p")


# ---------------------------------------------------------------- load errors


def test_error_missing_file_and_unknown_extension(tmp_path):
    assert user_error(load, tmp_path, "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    (tmp_path / "p.txt").write_text("hi\n")
    msg = user_error(load, tmp_path, "p.txt")
    assert "p.txt" in msg and "format" in msg
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    assert "split" in user_error(load, tmp_path, "p.jsonl", split="train")


def test_error_malformed_json_line(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, '{"prompt": "broken'], blank_after=1)
    msg = user_error(load, tmp_path, "bad.jsonl")
    assert "bad.jsonl" in msg and "line 3" in msg and "malformed JSON" in msg


def test_error_csv_parse_and_field_count(tmp_path):
    (tmp_path / "q.csv").write_text('prompt,id\n"ok",1\n"unterminated,2\n', encoding="utf-8")
    msg = user_error(load, tmp_path, "q.csv")
    assert "q.csv" in msg and "CSV parse error" in msg and "line 3" in msg
    (tmp_path / "n.csv").write_text("prompt,id\na,1\nb,2,extra\n", encoding="utf-8")
    msg = user_error(load, tmp_path, "n.csv")
    assert "n.csv" in msg and "line 3" in msg and "3 fields but the header has 2" in msg


def test_error_row_without_prompt_or_messages(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", [{"prompt": "ok"}, {"text": "hi", "label": 1}])
    msg = user_error(load, tmp_path, "r.jsonl")
    assert "r.jsonl" in msg and "line 2" in msg and "'prompt'" in msg and "'messages'" in msg
    assert "text, label" in msg
    (tmp_path / "r.csv").write_text("question\nhi\n", encoding="utf-8")
    msg = user_error(load, tmp_path, "r.csv")
    assert "r.csv" in msg and "line 2" in msg and "question" in msg


@pytest.mark.parametrize(
    "messages, needle",
    [
        ("hello", "not a JSON list"),
        ({"role": "user"}, "must be a list"),
        ([{"role": "user"}], "item 0"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "item 1"),
        ([{"role": "user", "content": 3}], "item 0"),
    ],
)
def test_error_malformed_messages(tmp_path, messages, needle):
    write_jsonl(tmp_path / "m.jsonl", [{"prompt": "fine"}, {"messages": messages}])
    msg = user_error(load, tmp_path, "m.jsonl")
    assert "m.jsonl" in msg and "line 2" in msg and needle in msg


def test_error_prompt_not_a_string(tmp_path):
    write_jsonl(tmp_path / "n.jsonl", [{"prompt": 42}])
    msg = user_error(load, tmp_path, "n.jsonl")
    assert "n.jsonl" in msg and "line 1" in msg and "must be a string" in msg


def test_error_duplicate_ids(tmp_path):
    write_jsonl(
        tmp_path / "d.jsonl", [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}, {"id": "x", "prompt": "c"}]
    )
    msg = user_error(load, tmp_path, "d.jsonl")
    assert "d.jsonl" in msg and "line 3" in msg and "'x'" in msg and "line 1" in msg
    write_jsonl(tmp_path / "e.jsonl", [{"id": "z", "prompt": "d"}, {"id": "y", "prompt": "e"}])
    write_jsonl(tmp_path / "ok.jsonl", [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}])
    cfg = PromptsConfig(sources=[{"path": "ok.jsonl"}], ood=[{"path": "e.jsonl"}])
    msg = user_error(run_prompts, cfg, tmp_path, tmp_path / "out")
    assert "e.jsonl" in msg and "line 2" in msg and "'y'" in msg and "ok.jsonl line 2" in msg


def test_error_unreadable_parquet(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"this is not parquet")
    msg = user_error(load, tmp_path, "x.parquet")
    assert "x.parquet" in msg and "Parquet" in msg


# ---------------------------------------------------------------- dedup


def rec(i, text):
    return {"id": str(i), "messages": [{"role": "user", "content": text}], "category": None, "meta": {}}


def test_exact_dedup_normalises_case_and_whitespace():
    recs = [rec(0, "Hello   World"), rec(1, "hello world\n"), rec(2, "other")]
    recs.append(
        {
            **rec(3, "HELLO world"),
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "HELLO world"}],
        }
    )
    kept, counts = dedup(recs)
    assert [r["id"] for r in kept] == ["0", "2"]
    assert counts == {"exact_duplicate": 2, "near_duplicate": 0}


def test_near_dedup_collapses_one_word_paraphrase_only():
    base = words(150)
    variant = base.split()
    variant[75] = "zulu"
    unrelated = words(150, offset=5)
    recs = [rec(0, base), rec(1, " ".join(variant)), rec(2, unrelated), rec(3, "short one"), rec(4, "short two")]
    kept, counts = dedup(recs)
    assert [r["id"] for r in kept] == ["0", "2", "3", "4"]
    assert counts == {"exact_duplicate": 0, "near_duplicate": 1}
    assert dedup(list(reversed(recs)))[0][-1]["id"] == "1"  # first seen wins
    assert dedup(recs, near=False)[1] == {"exact_duplicate": 0, "near_duplicate": 0}
    assert [r["id"] for r in dedup(recs)[0]] == ["0", "2", "3", "4"]  # deterministic


# ---------------------------------------------------------------- splits


def ids_records(n, prefix="r"):
    return [rec(f"{prefix}{i}", f"prompt number {prefix}{i}") for i in range(n)]


def test_split_fractions_and_determinism():
    recs = ids_records(1000)
    splits, n_cont = make_splits(recs, validation=0.1, test=0.2, seed=3)
    sizes = {k: len(v) for k, v in splits.items()}
    assert n_cont == 0 and sizes["ood"] == 0 and sum(sizes.values()) == 1000
    assert 60 <= sizes["validation"] <= 140 and 150 <= sizes["test"] <= 250
    where = {r["id"]: name for name, rs in splits.items() for r in rs}
    shuffled = recs[500:] + ids_records(300, "new") + recs[:500][::-1]
    again, _ = make_splits(shuffled, validation=0.1, test=0.2, seed=3)
    where2 = {r["id"]: name for name, rs in again.items() for r in rs}
    assert all(where2[i] == s for i, s in where.items())  # stable under reorder and additions
    other_seed, _ = make_splits(recs, validation=0.1, test=0.2, seed=4)
    assert {r["id"] for r in other_seed["test"]} != {r["id"] for r in splits["test"]}


def test_split_independent_of_python_hash_seed():
    code = (
        "from potstill.data import assign_split;print(''.join(assign_split(f'x{i}', 0.3, 0.3)[0] for i in range(60)))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**env, "PYTHONHASHSEED": s}, capture_output=True, text=True, check=True
        ).stdout
        for s in ("1", "2")
    }
    assert outs == {"".join(assign_split(f"x{i}", 0.3, 0.3)[0] for i in range(60)) + "\n"}


def test_explicit_test_ood_separate_and_contamination():
    recs = ids_records(200)
    test = [rec("t1", "held out test"), rec("t2", recs[0]["messages"][0]["content"].upper())]
    ood = [rec("o1", "far away"), rec("o2", "  " + recs[1]["messages"][0]["content"])]
    splits, n_cont = make_splits(recs, validation=0.1, test=0.3, seed=0, test_records=test, ood_records=ood)
    train_ids = {r["id"] for r in splits["train"]}
    assert "r0" in train_ids and "r1" in train_ids
    assert [r["id"] for r in splits["test"]] == ["t1"] and [r["id"] for r in splits["ood"]] == ["o1"]
    assert n_cont == 2
    assert len(splits["train"]) + len(splits["validation"]) == 200  # no random test split
    assert not train_ids & {"o1", "o2", "t1", "t2"}


# ---------------------------------------------------------------- stage


def test_run_prompts_stats_exact(tmp_path):
    long_text = words(150)
    near = long_text.split()
    near[10] = "zulu"
    rows = [{"id": f"p{i}", "prompt": f"distinct prompt {i}", "facts": [i]} for i in range(40)]
    rows += [
        {"id": "e1", "prompt": "   "},
        {"id": "e2", "prompt": ""},
        {"id": "d1", "prompt": "DISTINCT   prompt 3"},
        {"id": "l1", "prompt": long_text},
        {"id": "l2", "prompt": " ".join(near)},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    k = next(i for i in range(40) if assign_split(f"p{i}", 0.2, 0.2, seed=1) == "train")
    write_jsonl(
        tmp_path / "ood.jsonl",
        [
            {"id": "o1", "prompt": "an ood prompt"},
            {"id": "o2", "prompt": f"Distinct prompt {k}"},
            {"id": "o3", "prompt": "\n"},
        ],
    )
    cfg = PromptsConfig(
        sources=[{"path": "train.jsonl"}], ood=[{"path": "ood.jsonl"}], seed=1, validation=0.2, test_fraction=0.2
    )
    out = tmp_path / "out"
    stats = run_prompts(cfg, tmp_path, out)
    files = {
        n: [json.loads(x) for x in (out / f"{n}.jsonl").read_text().splitlines()]
        for n in ("train", "validation", "test", "ood")
    }
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["dropped"] == {
        "empty": 3,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "too_long": 0,
        "contaminated": 1,
        "over_max_prompts": 0,
    }
    assert stats["loaded"] == 48
    assert {n: stats[n] for n in files} == {n: len(v) for n, v in files.items()}
    assert stats["train"] + stats["validation"] + stats["test"] == 41
    assert stats["loaded"] == sum(stats[n] for n in files) + sum(stats["dropped"].values())
    assert [r["id"] for r in files["ood"]] == ["o1"]
    assert files["train"][0]["meta"] == {"facts": [int(files["train"][0]["id"][1:])]}
    assert run_prompts(cfg, tmp_path, tmp_path / "out2") == stats  # deterministic


def test_run_prompts_empty_ood_file_and_max_prompts(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"prompt {i}"} for i in range(30)])
    cfg = PromptsConfig(
        sources=[{"path": "p.jsonl"}], max_prompts=20, validation=0.0, test_fraction=0.0, system_prompt="sys"
    )
    stats = run_prompts(cfg, tmp_path, tmp_path / "out")
    assert stats["train"] == 20 and stats["dropped"]["over_max_prompts"] == 10
    assert (tmp_path / "out" / "ood.jsonl").read_text() == ""
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "sys"}


def test_run_prompts_explicit_test_source(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"prompt {i}"} for i in range(50)])
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "test a"}, {"prompt": "test b"}, {"prompt": "prompt 3"}])
    cfg = PromptsConfig(sources=[{"path": "p.jsonl"}], test=[{"path": "t.jsonl"}], test_fraction=0.5)
    stats = run_prompts(cfg, tmp_path, tmp_path / "out")
    assert stats["train"] + stats["validation"] == 50
    assert stats["test"] + stats["dropped"]["contaminated"] == 3 and stats["test"] >= 2


def test_run_prompts_nothing_left(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": " "}, {"prompt": ""}])
    (tmp_path / "q.jsonl").write_text("", encoding="utf-8")
    cfg = PromptsConfig(sources=[{"path": "p.jsonl"}])
    out = tmp_path / "out"
    msg = user_error(run_prompts, cfg, tmp_path, out)
    assert msg.startswith(str(tmp_path / "p.jsonl")) and "no prompts left after dropping 2 empty and 0 duplicate" in msg
    cfg = PromptsConfig(sources=[{"path": "q.jsonl"}])
    assert "no prompts left" in user_error(run_prompts, cfg, tmp_path, out)
    assert not out.exists()


def test_prompts_config_validation():
    with pytest.raises(ValidationError):
        PromptsConfig(sources=[])
    with pytest.raises(ValidationError):
        PromptsConfig(sources=[{"path": "a.jsonl"}], validation=0.6)
    with pytest.raises(ValidationError):
        PromptsConfig(sources=[{"path": "a.jsonl"}], near_dup_threshold=0.4)
    with pytest.raises(ValidationError):
        PromptsConfig(sources=[{"path": "a.jsonl"}], shuffle=True)
    assert all(f.description for f in PromptsConfig.model_fields.values())


# -- prompt length (issue #13) ------------------------------------------------------------------


def test_length_estimate_and_drop_policies():
    from potstill.data.length import drop_too_long, estimate_tokens

    assert estimate_tokens([{"role": "user", "content": "one two three"}]) == 3 + 4 + 4  # 13 chars -> 4 > 3 words
    assert estimate_tokens([{"role": "user", "content": "a b c d e f"}]) == 3 + 6 + 4  # 6 words > 11 chars / 4
    recs = [{"id": f"r{n}", "messages": [{"role": "user", "content": "x" * n}]} for n in (4, 40, 400)]
    assert drop_too_long(recs, None, None) == (recs, 0)
    kept, n = drop_too_long(recs, None, 20)
    assert [r["id"] for r in kept] == ["r4", "r40"] and n == 1
    msg = user_error(drop_too_long, recs, None, 20, "error", {"r400": "f.jsonl line 3"})
    assert msg.startswith("f.jsonl line 3: prompt 'r400' has 107 tokens, over the limit of 20")


def test_length_counted_with_the_teachers_tokenizer(tmp_path, tiny_tokenizer_dir):
    from potstill.chat import encode_prompt
    from potstill.data.length import drop_too_long, prompt_tokens
    from potstill.models import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    rec = {"id": "a", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]}
    n = prompt_tokens(rec, tok)
    assert n == len(encode_prompt(tok, rec["messages"])) and n > 5  # the chat template is counted
    assert drop_too_long([rec], tok, n)[1] == 0 and drop_too_long([rec], tok, n - 1)[1] == 1


def test_prompt_limit_from_the_teacher(tmp_path, make_tiny_llama):
    from potstill.config import config_from_dict
    from potstill.data.prompts import hashed_prompts_config
    from potstill.teachers.limits import prompt_limit, teacher_context_limit

    teacher = make_tiny_llama(tmp_path / "t", max_positions=300)
    base = {
        "prompts": {"sources": [{"path": "p.jsonl"}]},
        "teacher": {"model": str(teacher), "max_new_tokens": 50},
        "student": {"model": "s"},
    }
    cfg = config_from_dict(base, tmp_path)
    assert teacher_context_limit(cfg) == 250
    limit = prompt_limit(cfg)
    assert (limit.max_tokens, limit.policy, limit.tokenizer) == (250, "drop", str(teacher))
    assert "300 (max_position_embeddings) less teacher.max_new_tokens 50" in limit.why
    hashed = hashed_prompts_config(cfg.prompts, limit)
    assert hashed["max_prompt_tokens"] == 250 and len(hashed["counted_with"]) == 64
    vllm = config_from_dict({**base, "teacher": {"model": f"vllm:{teacher}", "vllm": {"max_model_len": 100}}}, tmp_path)
    assert teacher_context_limit(vllm) == 100 - 64
    with pytest.raises(UserError, match="teacher.max_new_tokens 300 leaves no room"):
        teacher_context_limit(
            config_from_dict({**base, "teacher": {"model": str(teacher), "max_new_tokens": 300}}, tmp_path)
        )
    api = config_from_dict({**base, "teacher": {"model": "openai:m"}}, tmp_path)
    assert teacher_context_limit(api) is None and prompt_limit(api).max_tokens is None
    # a config without a limit hashes as before max_prompt_tokens / too_long existed
    assert hashed_prompts_config(api.prompts, prompt_limit(api)) == api.prompts.model_dump(
        mode="json", exclude={"max_prompt_tokens", "too_long"}, exclude_defaults=True
    )
    capped = config_from_dict(
        {
            **base,
            "teacher": {"model": "openai:m"},
            "prompts": {"sources": [{"path": "p.jsonl"}], "max_prompt_tokens": 30, "too_long": "error"},
        },
        tmp_path,
    )
    limit = prompt_limit(capped)
    assert (limit.max_tokens, limit.policy, limit.tokenizer) == (30, "error", None)
    assert hashed_prompts_config(capped.prompts, limit)["counted_with"] == "estimate"
