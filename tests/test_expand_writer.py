"""Tests of the expand stage's writer step: cleaning, resume (local and API writers), the shipped rewrites file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from faultserver import FaultServer
from potstill.errors import UserError
from potstill.expand.config import (
    ExpandConfig,
    Instruction,
    WriterSettings,
)
from potstill.expand.rewrites import main as export_main
from potstill.expand.rewrites import read_cache_file
from potstill.expand.run import run_expand
from potstill.expand.writer import (
    clean_rewrite,
    instruction_sha,
    make_writer_runner,
    reject_reason,
    writer_jobs,
)

OFF = {m: {"enabled": False} for m in ("typo", "swap", "dropout", "casing", "punctuation", "wrap", "compose")}
INSTRUCTIONS = [
    {"name": "plain", "method": "paraphrase", "template": "{prompt}"},
    {"name": "again", "method": "evolve", "template": "Again: {prompt}"},
]


def seeds(n: int = 6) -> list[dict]:
    topics = ["password", "invoice", "parcel", "refund", "username", "newsletter", "card", "address"]
    texts = [f"How do I change my {topics[i % 8]} number {i}?" for i in range(n)]
    return [
        {"id": f"s{i}", "messages": [{"role": "user", "content": t}], "category": "c", "meta": {}}
        for i, t in enumerate(texts)
    ]


def writer_cfg(**writer) -> ExpandConfig:
    base = {"enabled": True, "share": 1.0, "instructions": INSTRUCTIONS}
    return ExpandConfig(**OFF, writer={**base, **writer})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- cleaning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, text",
    [
        ("How do I reset it?", "How do I reset it?"),
        ('Sure! Here\'s a paraphrase:\n"How can I reset it?"', "How can I reset it?"),
        ("Paraphrase: How can I reset it?", "How can I reset it?"),
        ("**Rewritten message:** “How can I reset it?”", "How can I reset it?"),
        ("Rewritten question:\n1. How can I reset it?\n2. Another one", "How can I reset it?"),
        ("  'How can I reset it?'  ", "How can I reset it?"),
        ("Here is the rewritten message:", ""),
    ],
)
def test_clean_rewrite(raw, text):
    assert clean_rewrite(raw)[0] == text


def test_reject_reasons():
    cfg = WriterSettings(instructions=INSTRUCTIONS)
    ins = Instruction(**INSTRUCTIONS[1])
    seed = "How do I change my password?"
    assert reject_reason("", False, "stop", seed, ins, cfg) == "empty"
    assert reject_reason("How do I change my", False, "length", seed, ins, cfg) == "truncated"
    assert reject_reason("How can I change my password?", True, "length", seed, ins, cfg) is None  # more followed
    assert reject_reason("how do i change my  password?", False, "stop", seed, ins, cfg) == "echo"
    assert reject_reason("Again: how do I change my password", False, "stop", seed, ins, cfg) == "echo"
    assert reject_reason("word " * 60, False, "stop", seed, ins, cfg) == "overlong"
    assert reject_reason("What's the way to change my password?", False, "stop", seed, ins, cfg) is None


def test_writer_jobs_share_and_copies_are_seeded():
    cfg = WriterSettings(instructions=INSTRUCTIONS, share=0.5, copies=1)
    jobs = writer_jobs(cfg, seeds(40), seed=1)
    assert jobs == writer_jobs(cfg, seeds(40), seed=1)
    assert 10 <= len(jobs) <= 30 and len({r["id"] for r, _, _ in jobs}) == len(jobs)
    assert {sha for _, _, sha in jobs} <= {instruction_sha(Instruction(**i)) for i in INSTRUCTIONS}
    assert len(writer_jobs(cfg.model_copy(update={"copies": None, "share": 1.0}), seeds(40), 1)) == 80


# -- a local writer: interrupted, then resumed ------------------------------------------------------


def test_local_writer_resumes_without_regenerating(tmp_path, tiny_student_dir, monkeypatch):
    from potstill.engines.ct2 import CT2Generator  # a local writer generates on the default engine

    calls: list[int] = []
    original = CT2Generator.generate_batch

    def counting(self, prompts, settings):
        if fail_after[0] is not None and len(calls) >= fail_after[0]:
            raise RuntimeError("killed")
        calls.append(len(prompts))
        return original(self, prompts, settings)

    fail_after = [1]
    monkeypatch.setattr(CT2Generator, "generate_batch", counting)
    cfg = writer_cfg(model=str(tiny_student_dir), batch_size=4, max_new_tokens=6)
    train = seeds(6)  # 12 rewrites asked
    with pytest.raises(RuntimeError, match="killed"):
        run_expand(cfg, train, {}, tmp_path / "out", tmp_path / "work")
    assert calls == [4]
    assert len(read_jsonl(tmp_path / "work" / "writer" / "partial.jsonl")) == 4
    fail_after[0] = None
    stats = run_expand(cfg, train, {}, tmp_path / "out", tmp_path / "work")
    assert sum(calls) == 12  # the 4 already written were not generated again
    w = stats["writer"]
    assert w["asked"] == 12 and w["sent_to_writer"] == 12 and w["unanswered"] == 0
    assert w["accepted"] + sum(w["rejected"].values()) == 12
    assert len(read_jsonl(tmp_path / "out" / "writer" / "rewrites.jsonl")) == 12
    calls.clear()
    run_expand(cfg, train, {}, tmp_path / "out2", tmp_path / "work")
    assert calls == []


# -- an API writer, the rewrites file and provenance ------------------------------------------------


def api_runner(tmp_path: Path, cfg: ExpandConfig):
    """The default runner, with one attempt per request (a failure is left for the rerun at once)."""
    return make_writer_runner(
        cfg.writer,
        cache_path=tmp_path / "writer-api.sqlite",
        engine={"max_attempts": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.01},
    )


def test_api_writer_caches_and_retries_only_what_failed(tmp_path):
    train = seeds(6)
    bad = train[2]["messages"][0]["content"]
    with FaultServer(always_fail={bad}) as srv:
        cfg = writer_cfg(model="openai:test-model", base_url=srv.base_url)
        stats = run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w", writer_runner=api_runner(tmp_path, cfg))
        assert stats["writer"]["unanswered"] == 1 and stats["writer"]["accepted"] == 11
        assert stats["methods"]["paraphrase"]["made"] == 5 and stats["methods"]["evolve"]["made"] == 6
        srv.always_fail.clear()
        n_before = len(srv.log)
        stats = run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w", writer_runner=api_runner(tmp_path, cfg))
        assert [e["prompt"] for e in srv.log[n_before:]] == ["ping", bad]
        assert stats["writer"]["unanswered"] == 0 and stats["writer"]["accepted"] == 12
    rows = read_jsonl(tmp_path / "o" / "train.jsonl")[len(train) :]
    by_method = {r["meta"]["method"] for r in rows}
    assert by_method == {"paraphrase", "evolve"}
    for r in rows:
        m = r["meta"]
        assert m["synthetic"] is True and m["writer"] == "openai:test-model" and len(m["parents"]) == 1
        assert m["instruction"] in {"plain", "again"}
        parent = train[int(m["parents"][0][1:])]["messages"][0]["content"]
        assert r["messages"][0]["content"] == ("echo " if m["instruction"] == "plain" else "echo Again: ") + parent


def test_rewrites_file_export_and_reuse(tmp_path):
    train = seeds(6)
    with FaultServer() as srv:
        cfg = writer_cfg(model="openai:test-model", base_url=srv.base_url)
        run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w", writer_runner=api_runner(tmp_path, cfg))
    shipped = tmp_path / "rewrites.jsonl"
    assert export_main([str(tmp_path / "o"), str(shipped)]) == 0
    header, rows = read_cache_file(shipped)
    assert len(rows) == 12 and header["potstill_version"] and header["created"]
    assert header["writers"][0]["model"] == "openai:test-model" and header["writers"][0]["sha256"]
    assert [i["template"] for i in header["instructions"]] == ["{prompt}", "Again: {prompt}"]
    assert {i["sha"] for i in header["instructions"]} == {sha for _, sha in rows}

    # the file covers every seed: no writer model, no writer call
    cached = ExpandConfig(
        **OFF, writer={"enabled": True, "share": 1.0, "instructions": INSTRUCTIONS, "cache_file": "rewrites.jsonl"}
    )

    def no_calls(*args):
        raise AssertionError("the writer was called")

    stats = run_expand(cached, train, {}, tmp_path / "c", tmp_path / "w2", writer_runner=no_calls, base_dir=tmp_path)
    assert stats["writer"]["from_cache_file"] == 12 and stats["writer"]["sent_to_writer"] == 0
    assert read_jsonl(tmp_path / "c" / "train.jsonl") == read_jsonl(tmp_path / "o" / "train.jsonl")
    stats = run_expand(cached, train, {}, tmp_path / "c", tmp_path / "w2", base_dir=tmp_path)  # default runner too
    assert stats["writer"]["sent_to_writer"] == 0

    # a new seed and an edited one: only their rewrites are asked for; without a model that is an error
    edited = {**train[5], "messages": [{"role": "user", "content": "An edited question?"}]}
    changed = [*train[:5], edited, *seeds(7)[6:]]
    asked: list[str] = []

    def fake(records, out, work):
        asked.extend(r["id"] for r in records)
        return [{"id": r["id"], "text": "A fresh rewrite of it", "finish_reason": "stop"} for r in records]

    stats = run_expand(cached, changed, {}, tmp_path / "d", tmp_path / "w3", writer_runner=fake, base_dir=tmp_path)
    assert sorted(a.split("@")[0] for a in asked) == ["s5", "s5", "s6", "s6"]
    assert stats["writer"]["stale_in_cache_file"] == 2 and stats["writer"]["from_cache_file"] == 10
    with pytest.raises(UserError, match="no expand.writer.model"):
        run_expand(cached, changed, {}, tmp_path / "e", tmp_path / "w4", base_dir=tmp_path)


def test_rewrites_file_must_have_its_header(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"seed_id": "s0"}) + "\n")
    with pytest.raises(UserError, match="provenance header"):
        read_cache_file(bad)
    assert export_main([str(tmp_path / "missing"), str(tmp_path / "x.jsonl")]) == 2


def test_writer_expansions_pass_the_eval_guard(tmp_path):
    train = seeds(3)
    test = [{"id": "t0", "messages": [{"role": "user", "content": "A fresh rewrite of it"}]}]

    def fake(records, out, work):
        return [{"id": r["id"], "text": "A fresh rewrite of it", "finish_reason": "stop"} for r in records]

    stats = run_expand(
        writer_cfg(model="openai:fake"), train, {"test": test}, tmp_path / "o", tmp_path / "w", writer_runner=fake
    )
    assert stats["contaminated"]["by_split"] == {"test": 6} and stats["expansions"] == 0


def test_rewrites_of_several_seeds_merge_into_one_file(tmp_path):
    train = seeds(16)
    with FaultServer() as srv:
        cfg = writer_cfg(model="openai:test-model", base_url=srv.base_url, share=0.5, copies=1)
        for seed in (0, 1):
            run_expand(
                cfg,
                train,
                {},
                tmp_path / f"o{seed}",
                tmp_path / "w",
                writer_runner=api_runner(tmp_path, cfg),
                seed=seed,
            )
    one = {(r["seed_id"], r["instruction_sha"]) for r in read_jsonl(tmp_path / "o0" / "writer" / "rewrites.jsonl")}
    two = {(r["seed_id"], r["instruction_sha"]) for r in read_jsonl(tmp_path / "o1" / "writer" / "rewrites.jsonl")}
    assert one and two - one  # the second seed chose other prompts
    merged = tmp_path / "merged.jsonl"
    assert export_main([str(tmp_path / "o0"), str(tmp_path / "o1"), str(merged)]) == 0
    header, rows = read_cache_file(merged)
    assert set(rows) == one | two and len(read_jsonl(merged)) == 1 + len(one | two)  # each pair once
    assert [r["settings"]["seed"] for r in header["runs"]] == [0, 1] and len(header["writers"]) == 1

    cached = writer_cfg(share=0.5, copies=1, cache_file="merged.jsonl")  # no model: the file must cover both

    def no_calls(*args):
        raise AssertionError("the writer was called")

    for seed in (0, 1):
        stats = run_expand(cached, train, {}, tmp_path / f"c{seed}", tmp_path / "w3", seed, no_calls, base_dir=tmp_path)
        assert stats["writer"]["sent_to_writer"] == 0
        assert read_jsonl(tmp_path / f"c{seed}" / "train.jsonl") == read_jsonl(tmp_path / f"o{seed}" / "train.jsonl")


def test_exporting_a_run_without_rewrites_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "expand").mkdir()
    assert export_main([str(tmp_path / "expand"), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "expand.writer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()
