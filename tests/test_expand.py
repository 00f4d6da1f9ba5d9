"""Tests of the expand stage's rule-based and conversational expansions (potstill.expand), and of the stage itself."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from potstill.evaluate.contamination import contamination_report
from potstill.expand.chat import compose, lower_first, wrap
from potstill.expand.config import (
    ComposeSettings,
    ExpandConfig,
    Instruction,
    WrapSettings,
    WriterSettings,
    hashed_expand_config,
)
from potstill.expand.guard import EvalGuard
from potstill.expand.rules import PERTURBATIONS, seeded
from potstill.expand.run import run_expand
from potstill.io import sha256_json

TEXTS = [
    "How do I change the email address on my account?",
    "What's the difference between the basic and premium tiers, and can I switch later?",
    "My order #4417 arrived damaged. Can you tell me how to return it?",
    "Is there a way to export everything to a spreadsheet?\nI need it for a report.",
]
OFF = {m: {"enabled": False} for m in (*PERTURBATIONS, "wrap", "compose")}


def rec(i: int, text: str, category: str | None = "general", system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"id": f"p{i}", "messages": messages, "category": category, "meta": {"source_col": i}}


def only(**methods) -> ExpandConfig:
    """A config with every method off except ``methods`` (name -> settings dict)."""
    return ExpandConfig(**{**OFF, **{m: {"enabled": True, "share": 1.0, **s} for m, s in methods.items()}})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- perturbations --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(PERTURBATIONS))
def test_perturbation_deterministic_changing_and_identity_at_rate_zero(method):
    settings = getattr(ExpandConfig(), method).model_copy(update={"rate": 0.5})
    perturb = PERTURBATIONS[method]
    for text in TEXTS:
        first = perturb(text, settings, 1234, r"\d")
        changed = perturb(text, settings.model_copy(update={"rate": 1.0}), 1234, r"\d")
        random.seed(99)  # the global streams nlpaug draws from are disturbed in between: same answer anyway
        np.random.seed(99)
        random.random(), np.random.random()
        assert perturb(text, settings, 1234, r"\d") == first
        assert perturb(text, settings.model_copy(update={"rate": 0.0}), 1234, r"\d") == text
        assert changed != text, (method, text)
        assert first.count("\n") == changed.count("\n") == text.count("\n")  # line breaks survive
    outs = {perturb(TEXTS[1], settings, s, r"\d") for s in range(8)}
    assert len(outs) > 1  # the seed matters


@pytest.mark.parametrize("method", ["typo", "swap", "dropout"])
def test_nlpaug_perturbations_leave_protected_words_alone(method):
    settings = getattr(ExpandConfig(), method).model_copy(update={"rate": 1.0})
    text = "Order 4417 and invoice INV-2024 arrived late"
    for s in range(10):
        out = PERTURBATIONS[method](text, settings, s, r"\d")
        assert "4417" in out.split() and "INV-2024" in out.split()


def sample(texts: list[str]) -> dict:
    """Every rule and conversational expansion of ``texts`` at seed 7 (run here and in a subprocess)."""
    from potstill.expand.chat import compose, wrap
    from potstill.expand.rules import PERTURBATIONS

    cfg = ExpandConfig()
    out = {m: [f(t, getattr(cfg, m), 7, cfg.protect) for t in texts] for m, f in PERTURBATIONS.items()}
    out["wrap"] = [wrap(t, cfg.wrap, 7) for t in texts]
    out["compose"] = compose(texts, cfg.compose.model_copy(update={"max_parts": 4}), 7)
    return out


def test_same_output_in_another_process_with_another_hash_seed():
    here = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)]),
        "PYTHONHASHSEED": str(int(os.environ.get("PYTHONHASHSEED", "0") or 0) + 1),
    }
    code = "import json, sys, test_expand; print(json.dumps(test_expand.sample(json.loads(sys.argv[1]))))"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TEXTS)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == sample(TEXTS)


def test_seeded_restores_the_global_random_streams():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    with seeded(42):
        random.random(), np.random.random()
    assert (random.random(), np.random.random()) == expected


def test_casing_and_punctuation_follow_their_weights():
    lower = ExpandConfig().casing.model_copy(update={"styles": {"lower": 1.0}, "rate": 1.0})
    assert PERTURBATIONS["casing"]("Where Is My Parcel, Bob?", lower, 3) == "where is my parcel, bob?"
    upper = lower.model_copy(update={"styles": {"upper": 1.0}})
    assert PERTURBATIONS["casing"]("where is it?", upper, 3) == "WHERE IS IT?"
    drop = ExpandConfig().punctuation.model_copy(update={"ops": {"drop": 1.0}, "rate": 1.0})
    assert PERTURBATIONS["punctuation"]("Hi, what's up? It costs 1,000.50!", drop, 3) == "Hi whats up It costs 1,000.50"


# -- wrappers and composition ---------------------------------------------------------------------


def test_wrap_uses_only_the_configured_phrases():
    s = WrapSettings(
        greetings=["Yo crew,"],
        contexts=["Context line here."],
        politeness=["Humbly asking,"],
        signoffs=["Bye now."],
        greeting_rate=1,
        context_rate=1,
        politeness_rate=1,
        signoff_rate=1,
        newline_rate=0,
    )
    assert wrap("What time is it?", s, 0) == "Yo crew, context line here. Humbly asking, what time is it? Bye now."
    s = s.model_copy(update={"greeting_rate": 0, "context_rate": 0, "politeness_rate": 0, "signoff_rate": 0})
    for seed in range(20):  # at least one part is always added, from the lists only
        out = wrap("What time is it?", s, seed)
        rest = out.replace("What time is it?", "").replace("what time is it?", "")
        assert out != "What time is it?"
        assert rest.strip() in {"Yo crew,", "Context line here.", "Humbly asking,", "Bye now."}


def test_lower_first_keeps_acronyms_codes_and_i():
    assert lower_first("What is it?") == "what is it?"
    for text in ("I need help", "I'm lost", "API keys?", "E502 again", "iPhone app?"):
        assert lower_first(text) == text


def test_compose_uses_the_configured_joiners_and_keeps_every_part():
    parts = ["Where is my parcel?", "Can I change the address?", "Who do I call?"]
    s = ComposeSettings(joiners=[" ALSO-JOIN "], intro_rate=0, numbered_rate=0, min_parts=3, max_parts=3)
    assert compose(parts, s, 0) == "Where is my parcel? ALSO-JOIN can I change the address? ALSO-JOIN who do I call?"
    s = s.model_copy(update={"joiners": ["\n"], "intros": ["Two quick ones:"], "intro_rate": 1})
    assert compose(parts[:2], s, 0) == "Two quick ones: Where is my parcel?\nCan I change the address?"
    numbered = s.model_copy(update={"numbered_rate": 1.0, "intro_rate": 0})
    assert compose(parts[:2], numbered, 0) == "1. Where is my parcel?\n2. Can I change the address?"


# -- the stage ------------------------------------------------------------------------------------


def train_set(n: int = 40) -> list[dict]:
    subjects = [
        "password",
        "invoice",
        "delivery date",
        "refund",
        "profile picture",
        "newsletter",
        "username",
        "shipping address",
        "payment card",
        "two-factor login",
    ]
    frames = [
        "How do I update my {}?",
        "Where can I see my {}?",
        "Why did my {} change overnight?",
        "Can someone explain the {} settings to me?",
    ]
    texts = [f.format(s) for f in frames for s in subjects][:n]
    return [
        rec(i, t, category=["account", "billing"][i % 2], system="Be brief." if i % 5 == 0 else None)
        for i, t in enumerate(texts)
    ]


def test_run_expand_writes_originals_then_expansions_with_provenance(tmp_path):
    train = train_set()
    stats = run_expand(ExpandConfig(), train, {"test": [], "ood": []}, tmp_path / "out", tmp_path / "work", seed=3)
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert rows[: len(train)] == train and len(rows) == stats["train"] == len(train) + stats["expansions"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    synthetic = rows[len(train) :]
    assert {r["meta"]["method"] for r in synthetic} == {*PERTURBATIONS, "wrap", "compose"}
    ids = {r["id"] for r in train}
    by_id = {r["id"]: r for r in train}
    for r in synthetic:
        m = r["meta"]
        assert set(r) == {"id", "messages", "category", "meta"} and m["synthetic"] is True
        assert r["id"] == f"{m['method']}-{sha256_json({'method': m['method'], 'messages': r['messages']})[:16]}"
        assert r["id"] not in ids and all(p in by_id for p in m["parents"])
        parent = by_id[m["parents"][0]]
        assert r["messages"][:-1] == parent["messages"][:-1]  # system messages kept, last user message changed
        assert r["messages"][-1]["role"] == "user" and r["messages"][-1] != parent["messages"][-1]
        assert (len(m["parents"]) >= 2) == (m["method"] == "compose")
        ids.add(r["id"])
    made = sum(v["made"] for v in stats["methods"].values())
    drops = stats["dropped"]
    assert made == stats["expansions"] + drops["exact_duplicate"] + drops["near_duplicate"] + drops["contaminated"]
    assert sum(v["kept"] for v in stats["methods"].values()) == stats["expansions"]


def test_run_expand_is_deterministic_and_methods_are_independent(tmp_path):
    train = train_set()
    run_expand(ExpandConfig(), train, {}, tmp_path / "a", tmp_path / "w", seed=7)
    run_expand(ExpandConfig(), train, {}, tmp_path / "b", tmp_path / "w", seed=7)
    a = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert a == read_jsonl(tmp_path / "b" / "train.jsonl")
    run_expand(ExpandConfig(seed=8), train, {}, tmp_path / "c", tmp_path / "w", seed=7)
    assert a != read_jsonl(tmp_path / "c" / "train.jsonl")  # cfg.seed overrides the run's seed
    no_wrap = ExpandConfig(wrap={"enabled": False})
    run_expand(no_wrap, train, {}, tmp_path / "d", tmp_path / "w", seed=7)
    typos = [r for r in a if r["meta"].get("method") == "typo"]
    d = read_jsonl(tmp_path / "d" / "train.jsonl")
    assert typos and typos == [r for r in d if r["meta"].get("method") == "typo"]


def test_share_and_copies(tmp_path):
    train = train_set()
    cfg = only(wrap={"share": 0.5, "copies": 3})
    stats = run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w", seed=0)
    made = stats["methods"]["wrap"]["made"]
    assert made % 3 == 0 and 0.25 * len(train) * 3 <= made <= 0.75 * len(train) * 3
    rows = read_jsonl(tmp_path / "o" / "train.jsonl")[len(train) :]
    parents = {r["meta"]["parents"][0] for r in rows}
    assert len(parents) == made // 3


def test_surface_changes_are_deduplicated_on_raw_text(tmp_path):
    train = [rec(0, "Where Is My Parcel?"), rec(1, "where is my parcel?")]
    cfg = only(casing={"styles": {"lower": 1.0}, "rate": 1.0, "copies": 3})
    stats = run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w")
    # p0 lower-cased thrice: equals p1 exactly; p1 lower-cased: unchanged (never made)
    assert stats["methods"]["casing"] == {"made": 3, "kept": 0, "unchanged": 3}
    assert stats["dropped"]["exact_duplicate"] == 3
    cfg = only(casing={"styles": {"upper": 1.0}, "rate": 1.0, "copies": 3})
    stats = run_expand(cfg, train, {}, tmp_path / "o", tmp_path / "w")
    assert stats["expansions"] == 1 and stats["dropped"]["exact_duplicate"] == 5  # all six are WHERE IS MY PARCEL?


def test_expansions_never_copy_an_evaluation_prompt(tmp_path):
    train = train_set(20) + [rec(99, "How Do I Export My Notes To PDF")]
    test = [rec(500, "how do i export my notes to pdf?"), rec(501, "Is the moon made of cheese?")]
    ood = [{"id": "o1", "messages": [{"role": "user", "content": "Where can I see my invoice?"}]}]
    cfg = only(casing={"styles": {"lower": 1.0}, "rate": 1.0}, wrap={}, compose={"share": 0.5})
    stats = run_expand(cfg, train, {"test": test, "ood": ood}, tmp_path / "o", tmp_path / "w")
    by_split = stats["contaminated"]["by_split"]
    # the lower-cased p99 is the test prompt; its wrap contains it whole; every expansion of p11 copies ood
    assert by_split["test"] >= 2 and by_split["ood"] >= 2
    assert stats["dropped"]["contaminated"] == sum(by_split.values())
    assert {e["eval_id"] for e in stats["contaminated"]["examples"]} <= {"p500", "o1"}
    synthetic = read_jsonl(tmp_path / "o" / "train.jsonl")[len(train) :]
    assert synthetic
    report = contamination_report({"test": test, "ood": ood}, synthetic)
    assert all(s["contaminated"] == 0 for s in report["splits"].values())
    assert all(EvalGuard({"test": test, "ood": ood}).match(r) is None for r in synthetic)


def test_eval_guard_both_directions():
    guard = EvalGuard({"test": [rec(1, "How can I reset the password of my account today?")]})
    assert guard.match(rec(2, "how can i reset the password of my account today")) == ("test", "p1")
    wrapped = "Hello there, I have been stuck for a while. How can I reset the password of my account today? Thanks!"
    assert guard.match(rec(3, wrapped)) == ("test", "p1")  # the test prompt lies whole inside it
    assert guard.match(rec(4, "How can I reset my email address?")) is None
    assert EvalGuard({}).match(rec(5, "anything")) is None


def test_max_total_is_a_seeded_sample(tmp_path):
    train = train_set()
    stats = run_expand(only(wrap={}, typo={}), train, {}, tmp_path / "o", tmp_path / "w", seed=1)
    n = stats["expansions"]
    capped = run_expand(
        only(wrap={}, typo={}).model_copy(update={"max_total": 10}), train, {}, tmp_path / "c", tmp_path / "w", seed=1
    )
    assert capped["expansions"] == 10 and capped["dropped"]["over_max_total"] == n - 10
    full = read_jsonl(tmp_path / "o" / "train.jsonl")
    kept = read_jsonl(tmp_path / "c" / "train.jsonl")[len(train) :]
    assert [r for r in full if r in kept] == kept  # a subset, in order


def test_compose_only_joins_single_question_chats_with_the_same_system_prompt(tmp_path):
    train = train_set(20)
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What now?"},
    ]
    train.append({"id": "multi", "messages": chat, "category": None, "meta": {}})
    run_expand(only(compose={"min_parts": 2, "max_parts": 3}), train, {}, tmp_path / "o", tmp_path / "w")
    by_id = {r["id"]: r for r in train}
    rows = read_jsonl(tmp_path / "o" / "train.jsonl")[len(train) :]
    assert rows and all(r["meta"]["method"] == "compose" for r in rows)
    for r in rows:
        parents = [by_id[p] for p in r["meta"]["parents"]]
        assert "multi" not in r["meta"]["parents"] and 2 <= len(parents) <= 3
        assert len({json.dumps(p["messages"][:-1]) for p in parents}) == 1
        assert all(p["messages"][-1]["content"].rstrip("?")[1:] in r["messages"][-1]["content"] for p in parents)


# -- config ---------------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValidationError, match="extra"):
        ExpandConfig(typo={"rat": 0.1})
    with pytest.raises(ValidationError):
        ExpandConfig(typo={"rate": 1.5})
    with pytest.raises(ValidationError, match="max_parts"):
        ExpandConfig(compose={"min_parts": 3, "max_parts": 2})
    with pytest.raises(ValidationError, match="prompt"):
        Instruction(name="x", method="paraphrase", template="no placeholder")
    with pytest.raises(ValidationError, match="model"):
        WriterSettings(enabled=True)
    with pytest.raises(ValidationError, match="regex"):
        ExpandConfig(protect="(")
    with pytest.raises(ValidationError, match="weights"):
        ExpandConfig(casing={"styles": {"lower": 0}})
    assert re.compile(ExpandConfig().protect)
    for field in ExpandConfig.model_fields.values():
        assert field.description


def test_hashed_config_leaves_out_run_only_writer_settings():
    a = ExpandConfig(writer={"enabled": True, "model": "openai:m", "concurrency": 4, "cache_file": "a.jsonl"})
    b = ExpandConfig(
        writer={"enabled": True, "model": "openai:m", "concurrency": 64, "cache_file": "b.jsonl", "api_key_env": "K"}
    )
    assert hashed_expand_config(a) == hashed_expand_config(b)
    other = ExpandConfig(writer={"enabled": True, "model": "openai:other"})
    assert hashed_expand_config(a) != hashed_expand_config(other)
