"""Contamination check: exact and n-gram overlap of evaluation prompts with training prompts; refusal unless forced."""

from __future__ import annotations

import json

import pytest
import yaml

from potstill.errors import UserError
from potstill.evaluate.contamination import NGRAM, check_contamination, contamination_report, prompt_words


def rec(i, text, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"id": i, "messages": msgs}


TRAIN = [
    rec("t0", "How do I export a notebook to PDF from the desktop app today?"),
    rec("t1", "What is the monthly price of the Pro plan for a single user?"),
    rec("t2", "Explain error code E101 please."),
]


def test_exact_near_and_clean():
    splits = {
        "test": [
            rec("e0", "  how do I EXPORT a notebook to PDF from the desktop app today? "),  # exact after normalisation
            rec(
                "e1", "What is the monthly price of the Pro plan for a single user, roughly?"
            ),  # 14 words: 6 of 7 8-grams in training
            rec("e2", "Which colour is the sky on Mars at noon in summer?"),  # clean
            rec("e3", "error code E101"),  # short (< 8 words): contained in a training prompt
            rec("e4", "Explain error code E999 please."),  # short, not contained
        ],
        "ood": [rec("o0", "Tell me a joke about zebras and wizards, would you?")],
    }
    rep = contamination_report(splits, TRAIN)
    t = rep["splits"]["test"]
    assert (rep["ngram"], rep["train_prompts"]) == (NGRAM, 3)
    assert (t["n"], t["exact"], t["near_duplicates"], t["contaminated"]) == (5, 1, 2, 3)
    assert t["contaminated_rate"] == pytest.approx(0.6)
    ex = {e["id"]: e for e in t["examples"]}
    assert ex["e0"] == {"id": "e0", "train_id": "t0", "overlap": 1.0, "exact": True}
    assert (
        ex["e1"]["train_id"] == "t1" and ex["e1"]["overlap"] == pytest.approx(6 / 7, abs=1e-4) and not ex["e1"]["exact"]
    )
    assert ex["e3"]["overlap"] == 1.0 and "e4" not in ex and "e2" not in ex
    # independent computation of the mean overlap (word 8-grams; short prompts as one k-gram)
    words = [prompt_words(r) for r in TRAIN]

    def overlap(w):
        k = min(NGRAM, len(w))
        grams = {tuple(x[i : i + k]) for x in words for i in range(len(x) - k + 1)}
        mine = [tuple(w[i : i + k]) for i in range(len(w) - k + 1)]
        return sum(g in grams for g in mine) / len(mine)

    expected = [1.0, 6 / 7, 0.0, 1.0, overlap(prompt_words(splits["test"][4]))]
    assert t["mean_ngram_overlap"] == pytest.approx(sum(expected) / 5, abs=1e-6)
    assert rep["splits"]["ood"]["contaminated"] == 0 and rep["splits"]["ood"]["max_ngram_overlap"] == 0.0


def test_system_prompts_are_ignored():
    sys = "You are the helpful support assistant of Quillkeep, answer in one or two short sentences."
    rep = contamination_report(
        {"test": [rec("e", "Is there a student discount?", system=sys)]},
        [rec("t", "How do I reset my password?", system=sys)],
    )
    assert rep["splits"]["test"]["contaminated"] == 0 and rep["splits"]["test"]["mean_ngram_overlap"] == 0.0


def test_refuses_over_threshold_unless_forced():
    splits = {
        "test": [rec("e0", TRAIN[0]["messages"][0]["content"]), rec("e1", "Something else entirely, new words here.")]
    }
    rep = contamination_report(splits, TRAIN)
    with pytest.raises(UserError, match=r"contaminated evaluation: test: 1 of 2 .*force_contaminated"):
        check_contamination(rep, threshold=0.05)
    assert rep["refused"] is True
    lines = check_contamination(rep, threshold=0.05, force=True)
    assert len(lines) == 1 and "forced" in lines[0] and rep["refused"] is False and rep["forced"] is True
    below = check_contamination(contamination_report(splits, TRAIN), threshold=0.6)
    assert len(below) == 1 and "forced" not in below[0]  # reported, not refused
    assert check_contamination(contamination_report({"test": splits["test"][1:]}, TRAIN), threshold=0.0) == []


def test_helpdesk_splits_pass_the_default_threshold():
    """The shipped example's test/OOD prompts (after the prompts stage drops exact copies) are not contaminated."""
    from pathlib import Path

    from potstill.data.split import drop_contaminated

    data = Path(__file__).resolve().parents[1] / "examples" / "helpdesk" / "data"
    if not (data / "train.jsonl").is_file():
        pytest.skip("examples/helpdesk/data not present")

    def load(name):
        return [rec(r["id"], r["prompt"]) for r in map(json.loads, (data / name).read_text().splitlines())]

    train = load("train.jsonl")
    splits = {s: drop_contaminated(train, load(f"{s}.jsonl"))[0] for s in ("test", "ood")}
    rep = contamination_report(splits, train)
    check_contamination(rep, threshold=0.05)  # does not raise
    assert all(s["contaminated_rate"] <= 0.05 for s in rep["splits"].values())


def test_pipeline_eval_refuses_before_loading_models(tmp_path, tiny_teacher_dir, tiny_student_dir):
    """`potstill eval` stops with a one-line error naming the override when test prompts copy training prompts."""
    from potstill.config import load_config
    from potstill.pipeline import open_run, run_stages

    train = [f"please tell me about the price of plan number {i} for teams and families" for i in range(12)]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "prompt": p}) + "\n" for i, p in enumerate(train))
    )
    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps({"id": f"e{i}", "prompt": p + " thanks"}) + "\n" for i, p in enumerate(train[:4]))
    )
    cfg = {
        "name": "c",
        "run_dir": "run",
        "prompts": {
            "sources": [{"path": "train.jsonl"}],
            "test": [{"path": "test.jsonl"}],
            "validation": 0.0,
            "test_fraction": 0.0,
        },
        "teacher": {"model": str(tiny_teacher_dir)},
        "student": {"model": str(tiny_student_dir), "init": "random"},
        "train": {"methods": ["sft"]},
        "eval": {"splits": ["test"]},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = open_run(load_config(tmp_path / "c.yaml"))
    run_stages(p, ["prompts"])
    (tmp_path / "run" / "students" / "sft").mkdir(parents=True)  # a stand-in for a trained student
    (tmp_path / "run" / "students" / "sft" / "_provenance.json").write_text(json.dumps({"inputs_hash": "x" * 64}))
    with pytest.raises(UserError, match=r"test: 4 of 4 evaluation prompts .* eval.force_contaminated=true"):
        run_stages(p, ["eval"])
    assert not (tmp_path / "run" / "eval").exists()


def test_validation_drawn_from_the_training_sources_is_warned_not_refused():
    """Near copies in validation measure the sources' redundancy: a warning, so tuning on it still runs."""
    same = rec("v0", TRAIN[0]["messages"][0]["content"])
    rep = contamination_report(
        {"validation": [same], "test": [rec("e1", "Something else entirely, new words here.")]}, TRAIN
    )
    lines = check_contamination(rep, threshold=0.05)
    assert rep["refused"] is False and len(lines) == 1 and lines[0].startswith("validation: 1 of 1")
    assert "warned, not refused" in lines[0]
    rep = contamination_report({"validation": [same], "test": [rec("e2", TRAIN[0]["messages"][0]["content"])]}, TRAIN)
    with pytest.raises(UserError, match="contaminated evaluation: test: 1 of 1"):
        check_contamination(rep, threshold=0.05)
