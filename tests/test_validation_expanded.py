"""The expanded validation split (``expand.validation`` -> ``validation_expanded``): its draws, its guard
against training and evaluation prompts, the hashes it leaves alone, eval on it, and tune's choice of it."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from potstill import api
from potstill.config import ScorerSpec, config_from_dict, load_config
from potstill.data.dedup import normalise
from potstill.errors import UserError
from potstill.evaluate.compare import retention_warnings
from potstill.evaluate.contamination import check_contamination, contamination_report
from potstill.evaluate.scorers import build_scorer
from potstill.expand.config import ExpandConfig, ValidationPhrases, hashed_expand_config, hashed_validation_config
from potstill.expand.guard import EvalGuard
from potstill.expand.run import rule_based
from potstill.expand.validation import run_expand_validation
from potstill.io import read_json, read_jsonl
from potstill.report.tables import split_label
from potstill.tune.search import objective_split

OFF = {m: {"enabled": False} for m in ("typo", "swap", "dropout", "casing", "punctuation", "wrap", "compose")}
HI = {"greetings": ["Hi,"], "greeting_rate": 1.0, "context_rate": 0.0, "politeness_rate": 0.0, "signoff_rate": 0.0}


def rec(rid: str, text: str, **meta) -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": text}], "category": None, "meta": meta}


def validation_set() -> list[dict]:
    subjects = ["password", "invoice", "delivery date", "refund", "username", "shipping address"]
    frames = ["How do I update my {}?", "Where can I see my {}?", "Why did my {} change overnight?"]
    return [rec(f"v{i}", f.format(s)) for i, (f, s) in enumerate((f, s) for f in frames for s in subjects)]


def texts(rows: list[dict]) -> list[str]:
    return [r["messages"][-1]["content"] for r in rows]


# -- the expansion itself ---------------------------------------------------------------------------


def test_deterministic_under_the_seed_and_other_draws_than_the_training_expansion(tmp_path):
    val, cfg = validation_set(), ExpandConfig()
    a = run_expand_validation(cfg, val, [], {}, tmp_path / "a", seed=5)
    run_expand_validation(cfg, val, [], {}, tmp_path / "b", seed=5)
    rows = read_jsonl(tmp_path / "a" / "validation_expanded.jsonl")
    assert rows and rows == read_jsonl(tmp_path / "b" / "validation_expanded.jsonl")
    assert a["expansions"] == len(rows) and {r["meta"]["method"] for r in rows} >= {"typo", "wrap", "compose"}
    run_expand_validation(cfg, val, [], {}, tmp_path / "c", seed=6)
    assert texts(read_jsonl(tmp_path / "c" / "validation_expanded.jsonl")) != texts(rows)
    # the training expansion's stream, applied to these very records, draws other copies
    same_stream = set(texts(rule_based(cfg, val, 5, Counter())))
    assert len(set(texts(rows)) & same_stream) < len(rows) / 2
    ids = {r["id"] for r in val}
    for r in rows:  # provenance as for training expansions; only the copies are written
        m = r["meta"]
        assert m["synthetic"] is True and m["parents"] and set(m["parents"]) <= ids and r["id"] not in ids
        assert (len(m["parents"]) >= 2) == (m["method"] == "compose")
    per_method = a["methods"]
    assert all(v["made"] == v["kept"] + v["dropped"] for v in per_method.values())
    assert sum(v["kept"] for v in per_method.values()) == a["expansions"]
    assert json.loads((tmp_path / "a" / "stats.json").read_text()) == a


def test_no_copy_of_a_training_prompt_or_expansion_nor_of_an_evaluation_prompt(tmp_path):
    val = [*validation_set(), rec("v90", "How Do I Export My Notes To PDF"), rec("v91", "Where is my parcel")]
    training = [
        rec("t0", "Where can I see my refund, please?"),
        rec("wrap-1", "hi, where is my parcel", synthetic=True, method="wrap", parents=["t9"]),  # a training expansion
    ]
    test = [rec("x0", "how do i export my notes to pdf?")]
    ood = [rec("o0", "Hi, Why did my username change overnight?")]
    cfg = ExpandConfig(
        **{
            **OFF,
            "casing": {"share": 1.0, "styles": {"lower": 1.0}},
            "wrap": {"share": 1.0, **HI, "greetings": ["Yo"]},
        },
        validation_phrases={"greetings": ["Hi,"]},  # the validation copies greet with the held-out list
    )
    stats = run_expand_validation(cfg, val, training, {"test": test, "ood": ood}, tmp_path / "o")
    rows = read_jsonl(tmp_path / "o" / "validation_expanded.jsonl")
    # v90 lower-cased is the test prompt, and its wrap holds it whole; v16's wrap is the ood prompt, and
    # v16 lower-cased lies whole inside it
    assert stats["contaminated"]["by_split"] == {"ood": 2, "test": 2}
    assert stats["dropped"]["copies_training"] == 1  # "Hi, Where is my parcel" = the training expansion
    assert stats["dropped"]["contaminated"] == 4
    assert rows and all(EvalGuard({"test": test, "ood": ood}).match(r) is None for r in rows)
    assert not {normalise(r) for r in rows} & {normalise(r) for r in training}
    report = contamination_report({"test": test, "ood": ood}, rows)
    assert all(s["contaminated"] == 0 for s in report["splits"].values())
    assert len({normalise(r) for r in rows}) == len(rows)  # deduplicated


def test_validation_changes_no_training_expansion_setting_and_defaults_hash_nothing():
    assert "validation" not in hashed_expand_config(ExpandConfig()) == {}
    assert hashed_expand_config(ExpandConfig(validation=True)) == hashed_expand_config(ExpandConfig())
    held_out = {"validation_phrases": ValidationPhrases().model_dump()}  # hashed even at its defaults
    assert hashed_validation_config(ExpandConfig()) == held_out
    writer = {"enabled": True, "cache_file": "w.jsonl"}
    assert hashed_validation_config(ExpandConfig(writer=writer, max_total=3, enabled=True)) == held_out
    assert hashed_validation_config(ExpandConfig(wrap={"share": 0.9})) == {"wrap": {"share": 0.9}, **held_out}
    other = ExpandConfig(validation_phrases={"joiners": [" Then: "]})
    assert hashed_validation_config(other) != held_out
    assert hashed_expand_config(other) == hashed_expand_config(ExpandConfig())  # training copies unchanged


# -- config, labels, warnings -----------------------------------------------------------------------


def base() -> dict:
    return {"prompts": {"sources": [{"path": "train.jsonl"}]}, "teacher": {"model": "t"}, "student": {"model": "s"}}


def test_eval_on_validation_expanded_needs_expand_validation():
    data = {**base(), "eval": {"splits": ["test", "validation_expanded"]}}
    with pytest.raises(UserError) as e:
        config_from_dict(data, base_dir=".")
    msg = str(e.value)
    assert msg.count("\n") == 0 and "config key 'eval.splits'" in msg and "set expand.validation: true" in msg
    on = config_from_dict({**data, "expand": {"validation": True}}, base_dir=".")
    assert on.eval.splits == ["test", "validation_expanded"] and not on.expand.enabled
    sets = {**base(), "prompts": {"sources": [{"path": "t.jsonl"}], "eval_sets": {"validation_expanded": []}}}
    with pytest.raises(UserError, match="prompts.eval_sets.*expand.validation makes"):
        config_from_dict(sets, base_dir=".")


def test_it_is_labelled_and_counted_in_distribution():
    assert split_label("validation_expanded") == "Validation (expanded)"

    def split(pct):
        return {"models": {"teacher": {"pct_of_teacher": 100.0}, "kd": {"pct_of_teacher": pct}}}

    roles = {"teacher": "teacher", "kd": "student"}
    assert retention_warnings({"test": split(98.0), "validation_expanded": split(70.0)}, roles) == []
    (w,) = retention_warnings({"validation_expanded": split(98.0), "ood": split(70.0)}, roles)
    assert w["id_split"] == "validation_expanded" and w["ood_split"] == "ood"
    # drawn from the training sources, like validation: warned about, never refused
    report = contamination_report(
        {"validation_expanded": [rec("a", "what is the price of plan 1?")]}, [rec("b", "What is the price of plan 1?")]
    )
    (line,) = check_contamination(report, 0.05)
    assert line.startswith("validation_expanded: 1 of 1") and "warned, not refused" in line


# -- the stage, eval and tune ---------------------------------------------------------------------


PROMPTS = {
    "sources": [{"path": "train.jsonl"}],
    "test": [{"path": "test.jsonl"}],
    "validation": 0.25,
    "test_fraction": 0.0,
}
EXPAND = {"enabled": True, "typo": {"share": 1.0}, "wrap": {"share": 1.0}}


def provenance(run, folder: str) -> str:
    return (run / folder / "_provenance.json").read_text()


def test_turning_it_on_reruns_nothing_before_eval_and_eval_reads_it(
    tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir
):
    cfg_path = tiny_project(tmp_path, tiny_teacher_dir, tiny_student_dir, prompts=PROMPTS, expand=EXPAND)
    api.stages(cfg_path, ["prompts", "expand", "generate", "train"])
    run, before = tmp_path / "run", {}
    for folder in ("prompts", "expand", "generate", "students/sft"):
        before[folder] = provenance(run, folder)
    assert not (run / "expand_validation").exists()

    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["expand"]["validation"] = True
    cfg["eval"]["splits"] = ["test", "validation_expanded"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    ctx = api.stages(cfg_path, ["prompts", "expand", "generate", "train", "eval"])
    for folder, prov in before.items():  # not rebuilt: the very same provenance record
        assert provenance(run, folder) == prov, folder

    made = read_jsonl(run / "expand_validation" / "validation_expanded.jsonl")
    validation = read_jsonl(run / "prompts" / "validation.jsonl")
    assert made and {p for r in made for p in r["meta"]["parents"]} <= {r["id"] for r in validation}
    training = read_jsonl(run / "expand" / "train.jsonl")  # the training prompts and their expansions
    assert not {normalise(r) for r in made} & {normalise(r) for r in training}
    stats = read_json(run / "expand_validation" / "stats.json")
    assert stats["seeds"] == len(validation) and stats["expansions"] == len(made)
    inputs = json.loads(provenance(run, "expand_validation"))["inputs"]
    assert inputs["train"] == ctx.hashes["expand"] and inputs["prompts"] == ctx.hashes["prompts"]

    results = read_json(run / "eval" / "results.json")
    assert list(results["splits"]) == ["test", "validation_expanded"]
    assert results["splits"]["validation_expanded"]["n"] == len(made)
    eval_inputs = json.loads(provenance(run, "eval"))["inputs"]
    assert eval_inputs["validation_expanded"] == ctx.hashes["expand_validation"]


def test_it_works_without_training_expansion(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    expand = {"validation": True, "compose": {"share": 1.0}}
    cfg_path = tiny_project(tmp_path, tiny_teacher_dir, tiny_student_dir, prompts=PROMPTS, expand=expand)
    ctx = api.stages(cfg_path, ["prompts", "expand"])
    run = tmp_path / "run"
    assert not (run / "expand").exists() and "expand" not in ctx.hashes
    assert "train" not in json.loads(provenance(run, "expand_validation"))["inputs"]
    assert ctx.split("validation_expanded") == read_jsonl(run / "expand_validation" / "validation_expanded.jsonl")
    composed = [r for r in ctx.split("validation_expanded") if r["meta"]["method"] == "compose"]
    validation = {r["id"] for r in ctx.split("validation")}
    assert composed and all(set(r["meta"]["parents"]) <= validation for r in composed)


def test_tune_scores_trials_on_the_expanded_split(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, capsys):
    space = {"train.lr": {"low": 1e-3, "high": 2e-3}}
    cfg_path = tiny_project(
        tmp_path,
        str(tiny_teacher_dir),
        tiny_student_dir,
        prompts={**PROMPTS, "test": []},
        expand={"validation": True},
        train={"methods": ["sft"], "epochs": 1, "batch_size": 8, "max_seq_len": 48},
        tune={"method": "sft", "space": space},
    )
    assert objective_split(load_config(cfg_path)) == "validation_expanded"
    assert objective_split(load_config(cfg_path, overrides=["expand.validation=false"])) == "validation"
    result = api.tune(cfg_path, trials=1)
    assert "pct_of_teacher on validation_expanded (expand.validation)" in capsys.readouterr().err
    (row,) = result["trials"]
    assert result["split"] == "validation_expanded" and row["state"] == "complete"
    run = tmp_path / "run"
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    assert best["split"] == "validation_expanded"
    assert json.loads((run / "tune" / "trials.jsonl").read_text())["split"] == "validation_expanded"
    trial = run / row["dir"]
    assert json.loads((trial / "trial.json").read_text())["split"] == "validation_expanded"
    assert (trial / "expand_validation").is_symlink()  # the parent's folder, seen from the trial
    results = read_json(trial / "eval" / "results.json")
    assert list(results["splits"]) == ["validation_expanded"]
    assert results["splits"]["validation_expanded"]["models"]["sft"]["pct_of_teacher"] == pytest.approx(row["value"])


# -- labels: what the scorer reads travels with every copy ------------------------------------------


def test_copies_inherit_their_parents_labels_and_composed_ones_merge_them(tmp_path):
    """A copy keeps its parent's ``meta.facts`` / ``reference``; a composed copy joins list labels and is dropped
    from the split when two parents' scalar labels (two different references) conflict."""
    val = [
        {**rec(f"v{i}", t, facts=[f"f{i}"]), "reference": f"answer {i % 2}"}
        for i, t in enumerate(texts(validation_set()))
    ]
    only = {**OFF, "typo": {"share": 1.0}, "compose": {"share": 1.0, "min_parts": 2, "max_parts": 2}}
    stats = run_expand_validation(ExpandConfig(**only), val, [], {}, tmp_path, seed=1)
    rows = read_jsonl(tmp_path / "validation_expanded.jsonl")
    parent = {r["id"]: r for r in val}
    typos = [r for r in rows if r["meta"]["method"] == "typo"]
    assert typos and all(
        r["meta"]["facts"] == parent[r["meta"]["parents"][0]]["meta"]["facts"]
        and r["reference"] == parent[r["meta"]["parents"][0]]["reference"]
        for r in typos
    )
    composed = [r for r in rows if r["meta"]["method"] == "compose"]
    assert composed, "no composed copy survived: the merge test would test nothing"
    for r in composed:
        ps = [parent[p] for p in r["meta"]["parents"]]
        assert r["meta"]["facts"] == [f for p in ps for f in p["meta"]["facts"]]
        assert len({p["reference"] for p in ps}) == 1 and r["reference"] == ps[0]["reference"]
    assert stats["dropped"]["unmerged_labels"] > 0  # the pairs whose references differ


def test_a_scorer_that_raises_is_one_line_naming_it_and_the_record():
    score = build_scorer(ScorerSpec(type="python", function="potstill.tasks.helpdesk.scorer:score"))
    with pytest.raises(
        UserError, match=r"scorer function 'potstill.tasks.helpdesk.scorer:score' failed on record 'x1'"
    ):
        score("an answer", {"id": "x1", "messages": [{"role": "user", "content": "hi"}]})


def test_validation_copies_wrap_and_join_with_the_held_out_phrases_only(tmp_path):
    val = validation_set()
    wrap = {"share": 1.0, **HI, "greetings": ["Good evening,"]}
    compose = {"share": 1.0, "joiners": [" Moreover, "], "intro_rate": 0.0, "numbered_rate": 0.0}
    cfg = ExpandConfig(
        **{**OFF, "wrap": wrap, "compose": compose},
        validation_phrases={"greetings": ["Hey hey!"], "joiners": [" Next up: "]},
    )
    run_expand_validation(cfg, val, [], {}, tmp_path / "v")
    rows = read_jsonl(tmp_path / "v" / "validation_expanded.jsonl")
    by_method = {m: [r for r in rows if r["meta"]["method"] == m] for m in ("wrap", "compose")}
    assert by_method["wrap"] and by_method["compose"]
    assert all(t.startswith("Hey hey!") for t in texts(by_method["wrap"]))
    assert all(" next up: " in t.lower() for t in texts(by_method["compose"]))
    assert not any("Good evening" in t or "Moreover" in t for t in texts(rows))
    # the training expansion of the same records keeps the training lists
    train_rows = rule_based(cfg, val, 0, Counter())
    assert all(t.startswith("Good evening,") for t in texts([r for r in train_rows if r["meta"]["method"] == "wrap"]))


@pytest.mark.parametrize(
    "phrases, named",
    [({"joiners": [" also, "]}, "compose.joiners"), ({"signoffs": ["THANKS!!"]}, "wrap.signoffs")],
)
def test_a_validation_phrase_that_training_uses_is_refused(phrases, named, tmp_path):
    with pytest.raises(ValueError, match=named):
        ExpandConfig(validation_phrases=phrases)
    with pytest.raises(UserError, match="validation_phrases"):
        config_from_dict({"expand": {"validation_phrases": phrases}}, tmp_path)


def test_a_writer_that_is_off_leaves_the_training_hash_alone():
    off = ExpandConfig(writer={"enabled": False, "cache_file": "w.jsonl", "share": 0.25, "copies": 1})
    assert hashed_expand_config(off) == hashed_expand_config(ExpandConfig())
    on = ExpandConfig(writer={"enabled": True, "cache_file": "w.jsonl", "share": 0.25, "copies": 1})
    assert hashed_expand_config(on)["writer"] == {"enabled": True, "share": 0.25, "copies": 1}
