"""Pairwise LLM judge: verdict parsing, both orders, combination, summary rates, local and API judges."""

from __future__ import annotations

import pytest

from potstill.evaluate.judge import (
    TEMPLATE,
    combine,
    judge_messages,
    judge_pairs,
    judge_summary,
    local_judge,
    parse_verdict,
)


@pytest.mark.parametrize(
    "text,verdict,how",
    [
        ("Answer B names the price.\nVerdict: B", "B", "strict"),
        ("verdict: **A**", "A", "strict"),
        ("Both are fine. Verdict - tie", "tie", "strict"),
        ("Verdict: A ... on reflection. Verdict: B", "B", "strict"),  # the last stated verdict counts
        ("[[A]]", "A", "strict"),
        ("[[C]]", "tie", "strict"),
        ("Verdict: Answer B", "B", "strict"),
        ("B", "B", "lenient"),
        (" tie. ", "tie", "lenient"),
        ("Answer A is better because it states the fee.", "A", "lenient"),
        ("I prefer B; it is shorter and correct.", "B", "lenient"),
        ("Both answers are equally good.", "tie", "lenient"),
        ("Response B is more accurate.", "B", "lenient"),
        ("Answer A is better, but Answer B is more complete.", None, "none"),  # conflicting: no verdict
    ],
)
def test_parse_verdict(text, verdict, how):
    assert parse_verdict(text, fallback="none") == (verdict, how)


def test_similarity_fallback():
    a, b = "The Pro plan costs $14 per month.", "Error E101 means the sync failed."
    assert parse_verdict("The Pro plan costs $14 a month.", a, b) == ("A", "similarity")
    assert parse_verdict("E101 means sync failed", a, b) == ("B", "similarity")
    assert parse_verdict("zebra", a, b) == (None, "none")  # shares no word with either answer
    assert parse_verdict("The plan sync", "plan x", "sync x") == ("tie", "similarity")
    assert parse_verdict("The Pro plan costs $14 a month.", a, b, fallback="none") == (None, "none")


def test_combine_orders():
    assert combine("win", "win") == "win" and combine("loss", "loss") == "loss"
    assert combine("win", "loss") == "tie" and combine("win", "tie") == "tie"  # inconsistent: conservative tie
    assert combine(None, "loss") == "loss" and combine("win", None) == "win" and combine(None, None) is None


def test_prompt_template():
    msgs = judge_messages("How much is Pro?", "  $14.  ", "")
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    user = msgs[1]["content"]
    assert "[Answer A]\n$14." in user and "[Answer B]\n(empty)" in user and "Verdict: tie" in user
    assert TEMPLATE.count("{") == 3


def _fake(rule):
    """A judge that applies ``rule(a, b) -> reply`` to the A/B answers it reads from the prompt."""
    seen = []

    def judge(prompts):
        seen.append(len(prompts))
        out = []
        for m in prompts:
            text = m[-1]["content"]
            a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
            b = text.split("[Answer B]\n")[1].split("\n\nGive")[0]
            out.append(rule(a, b))
        return out

    judge.seen = seen
    return judge


def test_judge_pairs_both_orders_and_summary():
    longer = _fake(
        lambda a, b: "Verdict: A" if len(a) > len(b) else ("Verdict: B" if len(b) > len(a) else "Verdict: tie")
    )
    qs = ["q1", "q2", "q3", "q4"]
    student = ["long answer here", "x", "same", "abc"]
    teacher = ["short", "much longer teacher", "same", "xyz"]
    rows = judge_pairs(longer, qs, student, teacher, ids=["a", "b", "c", "d"])
    assert longer.seen == [6]  # one batched call, two prompts per non-identical pair
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie", "tie"]
    assert rows[2]["identical"] and rows[2]["orders"] == []
    assert [o["student_position"] for o in rows[0]["orders"]] == ["A", "B"]
    assert [o["verdict"] for o in rows[0]["orders"]] == ["A", "B"] and rows[0]["consistent"] is True
    assert rows[0]["orders"][0]["rationale"] == "Verdict: A"
    s = judge_summary(rows, student_scores=[1, 0, 1, 1], teacher_scores=[0, 1, 1, 1], samples=500)
    assert (s["n"], s["decided"], s["identical"], s["replies"]) == (4, 4, 1, 6)
    assert (s["win"], s["tie"], s["loss"]) == (0.25, 0.5, 0.25) and s["preference"] == 0.5
    assert s["strict_rate"] == 1.0 and s["parse_rate"] == 1.0 and s["consistency"] == 1.0
    assert s["first_position_rate"] == 0.5 and s["scorer_agreement"] == 1.0 and s["scorer_agreement_n"] == 2
    assert s["preference_ci95"][0] <= 0.5 <= s["preference_ci95"][1]


def test_position_biased_judge_is_exposed():
    """A judge that always answers 'A' produces only ties (inconsistent orders) and a first-position rate of 1."""
    rows = judge_pairs(_fake(lambda a, b: "Verdict: A"), ["q"] * 3, ["s1", "s2", "s3"], ["t1", "t2", "t3"])
    s = judge_summary(rows, samples=200)
    assert [r["outcome"] for r in rows] == ["tie"] * 3 and s["consistency"] == 0.0 and s["first_position_rate"] == 1.0
    assert s["scorer_agreement"] is None


def test_unparsed_replies_are_counted_not_guessed():
    rows = judge_pairs(_fake(lambda a, b: "zebra"), ["q"] * 2, ["s1 a", "s2 b"], ["t1 c", "t2 d"])
    s = judge_summary(rows, samples=200)
    assert all(r["outcome"] is None for r in rows) and s["decided"] == 0 and s["win"] is None
    assert s["unparsed_rate"] == 1.0 and s["parse_rate"] == 0.0 and s["preference"] is None
    one = judge_pairs(_fake(lambda a, b: "Verdict: B" if a.startswith("t") else "no idea"), ["q"], ["s"], ["t"])
    assert one[0]["outcome"] == "win" and one[0]["consistent"] is None  # one order decided


def test_judge_returning_wrong_count_fails():
    with pytest.raises(RuntimeError, match="returned 1 replies for 2 prompts"):
        judge_pairs(lambda prompts: ["Verdict: A"], ["q"], ["s"], ["t"])


def test_local_judge_generates_one_reply_per_prompt(tiny_teacher_dir):
    judge = local_judge(tiny_teacher_dir, max_new_tokens=4, batch_size=2)
    prompts = [judge_messages(f"question {i}", "yes", "no") for i in range(3)]
    replies = judge(prompts)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    assert replies == judge(prompts)  # greedy: deterministic
    rows = judge_pairs(judge, ["q1", "q2"], ["a", "b"], ["c", "d"])
    assert all(len(r["orders"]) == 2 for r in rows)
    judge.close()


def test_api_judge_through_potstill_serve(tmp_path, tiny_teacher_dir, serve_model):
    """Any teacher provider can judge: here an OpenAI-compatible endpoint (potstill serve), via the engine and cache."""
    from potstill.config import TeacherConfig
    from potstill.evaluate.judge import api_judge

    url, _ = serve_model(tiny_teacher_dir, name="judge")
    cfg = TeacherConfig(model="openai:judge", base_url=url + "/v1", max_new_tokens=4, concurrency=2)
    judge = api_judge(cfg, tmp_path / "work", cache_path=tmp_path / "cache.sqlite")
    prompts = [judge_messages(f"question {i}", "yes", "no") for i in range(3)]
    replies = judge(prompts)
    local = local_judge(tiny_teacher_dir, max_new_tokens=4)(prompts)
    assert len(replies) == 3 and [r.strip() for r in replies] == local  # same model, greedy: same replies
    assert judge(prompts) == replies and (tmp_path / "cache.sqlite").is_file()


def test_judge_config():
    from potstill.config import EvalConfig, RunConfig, apply_overrides, config_from_dict
    from potstill.errors import UserError

    assert EvalConfig().judge_settings().max_examples == 100 and EvalConfig().judge_settings().model is None
    assert EvalConfig(judge=False).judge_settings() is None and EvalConfig(judge=None).judge_settings() is None
    assert EvalConfig(judge="off").judge_settings() is None
    assert EvalConfig(judge={"model": "openai:gpt-4o-mini", "max_examples": 5}).judge_settings().max_examples == 5
    base = {"prompts": {"sources": [{"path": "x.jsonl"}]}, "teacher": {"model": "t"}, "student": {"model": "s"}}
    cfg = config_from_dict(
        apply_overrides({**base, "eval": {"judge": True}}, ["eval.judge.include_floor=false"]), base_dir="."
    )
    assert isinstance(cfg, RunConfig) and cfg.eval.judge_settings().include_floor is False
    with pytest.raises(
        UserError, match=r"config key 'eval.judge': unknown key 'max_exampels' \(did you mean 'max_examples'\?\)"
    ):
        config_from_dict({**base, "eval": {"judge": {"max_exampels": 3}}}, base_dir=".")
    with pytest.raises(UserError, match=r"config key 'eval.judge': must be auto, true, false or a mapping"):
        config_from_dict({**base, "eval": {"judge": "maybe"}}, base_dir=".")
