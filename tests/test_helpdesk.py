"""Tests of the helpdesk reference domain: KB, query generator, scorer, shipped tokenizer and models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from potstill.tasks.helpdesk import answers, queries
from potstill.tasks.helpdesk.kb import Fact, KBError, KnowledgeBase, load_kb, normalize, validate
from potstill.tasks.helpdesk.scorer import asked_facts, score

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "helpdesk"
KB = load_kb()


def rec(*facts: str, meta: bool = False) -> dict:
    return (
        {"id": "x", "prompt": "q", "meta": {"facts": list(facts)}}
        if meta
        else {"id": "x", "prompt": "q", "category": "c", "facts": list(facts)}
    )


# --- knowledge base --------------------------------------------------------------------------


def test_kb_loads_and_validates():
    ids = [f.id for f in KB.facts]
    assert 80 <= len(ids) <= 150 and len(ids) == len(set(ids))
    assert set(KB.categories()) == {"plans", "limits", "policies", "errors", "howto"}
    for f in KB.facts:
        assert f.required and all(r.strip() and r == r.lower() for r in f.required)
        assert f.stated_in(normalize(f.value)), f.id
    assert sum(f.category == "errors" for f in KB.facts) >= 30  # 15-25 codes x (meaning, fix)


def test_kb_validation_rejects_bad_facts():
    good = Fact("a.x.price", "plans", "X", "price", "$5 per month", ("$5",))
    with pytest.raises(KBError, match="duplicate"):
        validate(KnowledgeBase("P", [good, good]))
    with pytest.raises(KBError, match="does not contain"):
        validate(KnowledgeBase("P", [Fact("b", "plans", "Y", "price", "$6 per month", ("$7",))]))
    with pytest.raises(KBError, match="also states"):  # "$5 or $6" would state both facts
        validate(KnowledgeBase("P", [good, Fact("c", "plans", "Y", "price", "$5 or $6", ("$6",))]))
    with pytest.raises(KBError, match="non-empty"):
        validate(KnowledgeBase("P", [Fact("d", "plans", "Z", "price", "$8", ())]))


def test_load_kb_from_path(tmp_path):
    path = tmp_path / "kb.json"
    path.write_text(
        json.dumps(
            {
                "product": "P",
                "facts": [
                    {
                        "id": "p.a.x",
                        "category": "plans",
                        "entity": "A",
                        "attribute": "x",
                        "value": "7 days",
                        "required": ["7 day"],
                    }
                ],
            }
        )
    )
    kb = load_kb(path)
    assert kb.product == "P" and kb.by_id["p.a.x"].required == ("7 day",)
    assert score("It lasts seven days.", rec("p.a.x"), kb=path) == 1.0


# --- scorer ----------------------------------------------------------------------------------


def test_normalize():
    assert normalize("Pro costs $14/mo. (100GB, 10 Users)") == "pro costs $14 month 100 gb 10 user"
    assert normalize("1,000 notebooks, 20 percent, $ 14.00") == "1000 notebook 20% $14"


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("The Pro plan costs $14 per month.", 1.0),
        ("Pro is $14/month.", 1.0),  # other wording and punctuation
        ("pro: $14 a MONTH", 1.0),
        ("The Pro plan is billed monthly.", 0.0),  # missing the value
        ("The Pro plan costs $16 per month.", 0.0),  # wrong value
        ("The Pro plan costs $140 per month.", 0.0),  # token boundaries: $14 != $140
        ("The Pro plan costs $6 per month.", 0.0),  # another plan's price
        ("Plans cost $0, $6, $14, $39 or $99 per month.", 0.0),  # hedge listing every price
        ("Pro costs $14 per month, Team $39 per month.", 0.0),  # volunteering a conflicting value
        ("", 0.0),
    ],
)
def test_score_price(answer, expected):
    assert score(answer, rec("plans.pro.price")) == expected


def test_score_other_categories():
    assert score("The Team plan includes 1 TB of storage.", rec("plans.team.storage")) == 1.0
    assert score("Team comes with 1TB of space", rec("plans.team.storage")) == 1.0
    assert score("Team includes 5 TB.", rec("plans.team.storage")) == 0.0
    assert score("Error E101 means your session has expired.", rec("errors.e101.meaning")) == 1.0
    assert score("Error E101 means your session is invalid.", rec("errors.e101.meaning")) == 0.0
    assert score("Sign out, then sign back in.", rec("errors.e101.fix")) == 1.0
    assert score("The maximum file upload size is 250MB.", rec("limits.file_upload_size.limit")) == 1.0
    assert score("The refund window is fourteen days.", rec("policies.refund.policy")) == 1.0
    assert score("Open the Trash and click Put back.", rec("howto.restore.steps")) == 1.0
    assert score("Open the trash.", rec("howto.restore.steps")) == 0.0  # one required phrase missing


def test_score_two_questions():
    r = rec("plans.pro.price", "errors.e101.meaning")
    assert score("The Pro plan costs $14 per month.", r) == 0.5
    assert score("Pro is $14 a month. E101 means your session has expired.", r) == 1.0
    both = rec("plans.pro.price", "plans.team.price")  # asked values never conflict with each other
    assert score("Pro costs $14 per month and Team $39 per month.", both) == 1.0
    assert score("Pro costs $14 per month and Team $45 per month.", both) == 0.5
    assert score("Pro costs $14 per month and Team $99 per month.", both) == 0.0  # $99 is Enterprise's


def test_score_record_shapes():
    assert score("The Pro plan costs $14 per month.", rec("plans.pro.price", meta=True)) == 1.0
    assert asked_facts({"meta": {"facts": "plans.pro.price errors.e101.fix"}}) == ["plans.pro.price", "errors.e101.fix"]
    assert asked_facts({"facts": '["plans.pro.price"]'}) == ["plans.pro.price"]
    with pytest.raises(KeyError):
        score("x", rec("no.such.fact"))


def test_gold_answers_score_full_marks():
    for f in KB.facts:
        assert score(answers.sentence(f), rec(f.id)) == 1.0, f.id
        for text in answers.phrasings(f):  # every phrasing states the fact
            assert score(text, rec(f.id)) == 1.0, text
    ids = [KB.facts[0].id, KB.facts[-1].id]
    assert score(answers.compose(KB, ids), rec(*ids)) == 1.0


def test_gold_answers_vary_in_phrasing_under_a_seed():
    import random

    fact = KB.by_id["plans.pro.price"]
    assert answers.compose(KB, [fact.id]) == answers.sentence(fact)  # no generator: the first pattern
    draws = [answers.compose(KB, [fact.id], random.Random(s)) for s in range(40)]
    assert len(set(draws)) == len(answers.ANSWER_TEMPLATES[("plans", "price")])  # every pattern is drawn
    assert draws == [answers.compose(KB, [fact.id], random.Random(s)) for s in range(40)]  # same seed, same text


# --- queries ---------------------------------------------------------------------------------


def test_generation_is_deterministic_and_well_formed():
    for split, n in (("train", 300), ("test", 120), ("ood", 120), ("augment", 60)):
        a, b = queries.generate(KB, split, n, seed=3), queries.generate(KB, split, n, seed=3)
        assert a == b and len(a) == n
        assert len({r["id"] for r in a}) == n
        for r in a:
            assert set(r) == {"id", "prompt", "category", "facts"} and r["prompt"].strip()
            assert all(i in KB.by_id for i in r["facts"]) and 1 <= len(r["facts"]) <= 2
    assert queries.generate(KB, "train", 50, seed=1) != queries.generate(KB, "train", 50, seed=2)
    ood = queries.generate(KB, "ood", 300, seed=0)
    kinds = {r["id"].split("-")[1] for r in ood}
    assert kinds == {"typo", "chitchat", "multi", "free"}
    assert all(len(r["facts"]) == 2 and r["category"] == "multi" for r in ood if "-multi-" in r["id"])


def test_test_templates_are_held_out():
    for f in KB.facts:
        train, test = set(queries.templates(f, "train")), set(queries.templates(f, "test"))
        assert train and test and not train & test, f.id
    train = {r["prompt"] for r in queries.generate(KB, "train", 3000, seed=0)}
    test = {r["prompt"] for r in queries.generate(KB, "test", 300, seed=0)}
    assert not train & test
    frames = {re.sub(r"\{[ea]\}", "", t) for t in queries.PLAN_FRAMES["test"] + queries.NOUN_FRAMES["test"]}
    assert not frames & {re.sub(r"\{[ea]\}", "", t) for t in queries.PLAN_FRAMES["train"]}


def test_freeform_ood_prompts_are_not_template_made():
    made = {r["prompt"] for s, n in (("train", 5000), ("test", 1000)) for r in queries.generate(KB, s, n)}
    assert not {p for p, _ in queries.FREEFORM} & made
    assert all(i in KB.by_id for _, ids in queries.FREEFORM for i in ids)


def test_shipped_data_files_match_the_generator():
    for split, n in (("train", 2000), ("test", 300), ("ood", 300)):
        lines = (EXAMPLE / "data" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == queries.generate(KB, split, n, seed=0)


# --- tokenizer and models --------------------------------------------------------------------


def test_chat_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(EXAMPLE / "teacher")
    assert tok.eos_token and tok.pad_token and tok.bos_token and 1000 <= len(tok) <= 2048
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How much is Pro?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|system|>Be brief.<|end|><|user|>How much is Pro?<|end|><|assistant|>"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "$14."}], tokenize=True, return_dict=False)
    assert full[: len(ids)] == ids and full[-1] == tok.eos_token_id
    assert tok.decode(full[len(ids) :], skip_special_tokens=True) == "$14."
    student = AutoTokenizer.from_pretrained(EXAMPLE / "student")
    assert student.get_vocab() == tok.get_vocab() and student.chat_template == tok.chat_template


def test_shipped_teacher_and_student_sizes():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(EXAMPLE / "teacher")
    assert next(teacher.parameters()).dtype == torch.float32
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(EXAMPLE / "student"))
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert n_t >= 10 * n_s
    assert teacher.config.vocab_size == student.config.vocab_size
    assert (EXAMPLE / "teacher" / "model.safetensors").stat().st_size <= 30 * 2**20
    assert not list((EXAMPLE / "student").glob("*.safetensors"))
    assert teacher.generation_config.eos_token_id == student.config.eos_token_id


def test_shipped_teacher_answers():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(EXAMPLE / "teacher")
    model = AutoModelForCausalLM.from_pretrained(EXAMPLE / "teacher").eval()
    records = [rec("plans.pro.price"), rec("errors.e101.fix"), rec("howto.restore.steps")]
    prompts = ["How much does the Pro plan cost?", "How do I fix error E101?", "How do I restore a deleted note?"]
    for r, prompt in zip(records, prompts):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        assert new[-1] == tok.eos_token_id
        assert score(tok.decode(new, skip_special_tokens=True), r) == 1.0


def test_handwritten_natural_set_is_well_formed():
    """data/natural.jsonl (written by hand, not generated): unique ids, known fact ids, KB categories."""
    rows = [json.loads(line) for line in (EXAMPLE / "data" / "natural.jsonl").read_text().splitlines()]
    assert len(rows) >= 80 and len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(r"nat-\d{3}", r["id"]) and r["prompt"].strip() for r in rows)
    for r in rows:
        facts = asked_facts(r)
        assert facts and len(set(facts)) == len(facts), r["id"]
        assert all(f in KB.by_id for f in facts), r["id"]
        assert r["category"] == KB.by_id[facts[0]].category, r["id"]
        gold = " ".join(KB.by_id[f].value for f in facts)
        assert score(gold, r) == 1.0, r["id"]  # each asked fact is stated by its own value
    assert {r["category"] for r in rows} == set(KB.categories())
