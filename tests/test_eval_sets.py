"""Named extra evaluation sets (``prompts.eval_sets``): config checks, the prompts stage's split, the
expand stage's guard, and an end-to-end run that evaluates and reports one."""

import json

import pytest
import yaml

from potstill import api
from potstill.config import config_from_dict, load_config
from potstill.data import make_splits, run_prompts
from potstill.errors import UserError
from potstill.evaluate.compare import retention_warnings
from potstill.evaluate.stage import warn
from potstill.io import read_json, read_jsonl
from potstill.progress import console

NATURAL = [
    {"id": "n0", "prompt": "hi, can i pay by invoice instead of card?", "category": "billing"},
    {"id": "n1", "prompt": "What is the price of plan 7?", "category": "plans"},  # a training prompt: dropped
    {"id": "n2", "prompt": "my login email changed, where do I update it", "category": "account"},
    {"id": "n3", "prompt": "hi, can I pay by invoice instead of card?", "category": "billing"},  # duplicate of n0
]


def base(**prompts) -> dict:
    return {
        "prompts": {"sources": [{"path": "train.jsonl"}], **prompts},
        "teacher": {"model": "t"},
        "student": {"model": "s"},
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config_error(data: dict) -> str:
    with pytest.raises(UserError) as e:
        config_from_dict(data, base_dir=".")
    return str(e.value)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Natural", "set name 'Natural' must be lower case letters, digits and _, starting with a letter"),
        ("2024_logs", "set name '2024_logs' must be lower case"),
        ("ood", "set name 'ood' is a built-in split (train, validation, test, ood)"),
        ("train", "set name 'train' is a built-in split"),
    ],
)
def test_a_bad_set_name_is_one_line(name, why):
    msg = config_error(base(eval_sets={name: [{"path": "x.jsonl"}]}))
    assert msg.count("\n") == 0 and "config key 'prompts.eval_sets': " + why in msg


def test_an_unknown_eval_split_is_one_line_with_a_hint():
    data = base(eval_sets={"natural": [{"path": "n.jsonl"}]})
    data["eval"] = {"splits": ["test", "natrual"]}
    msg = config_error(data)
    assert msg.count("\n") == 0
    assert "config key 'eval.splits': unknown split 'natrual'" in msg and "(natural)" in msg
    assert "did you mean 'natural'?" in msg
    data = base()
    data["eval"] = {"splits": ["handwritten"]}
    assert "a name declared in prompts.eval_sets" in config_error(data)
    data = base(eval_sets={"natural": [{"path": "n.jsonl"}]})
    data["eval"] = {"splits": ["test", "natural", "validation"]}
    assert config_from_dict(data, base_dir=".").eval.splits == ["test", "natural", "validation"]


def test_route_calibrates_on_any_split_the_config_makes():
    data = base(eval_sets={"natural": [{"path": "n.jsonl"}]})
    data["route"] = {"split": "natural"}
    assert config_from_dict(data, base_dir=".").route.split == "natural"
    data["route"] = {"split": "natral"}
    msg = config_error(data)
    assert msg.count("\n") == 0 and "config key 'route.split': unknown split 'natral'" in msg
    assert "did you mean 'natural'?" in msg
    data["route"] = {"split": "validation_expanded"}
    assert "config key 'route.split': split 'validation_expanded' is made by the expand stage" in config_error(data)
    data["expand"] = {"validation": True}
    assert config_from_dict(data, base_dir=".").route.split == "validation_expanded"


def test_a_bad_source_inside_a_set_names_its_key():
    assert "unknown config key 'prompts.eval_sets.natural.0.pth' (did you mean 'path'?)" in config_error(
        base(eval_sets={"natural": [{"pth": "n.jsonl"}]})
    )
    assert "missing required config key 'prompts.eval_sets.natural.0.path'" in config_error(
        base(eval_sets={"natural": [{}]})
    )


def test_make_splits_drops_train_copies_from_each_set():
    train = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"price of plan {i}?"}]} for i in range(3)]
    sets = {"natural": [{"id": "n", "messages": [{"role": "user", "content": "Price of  plan 1?"}]}]}
    sets["logs"] = [{"id": "l", "messages": [{"role": "user", "content": "refund please"}]}]
    out, n = make_splits(train, 0.0, 0.0, eval_sets=sets)
    assert n == 1 and out["natural"] == [] and [r["id"] for r in out["logs"]] == ["l"]
    assert len(out["train"]) == 3


def test_the_prompts_stage_writes_each_set(tmp_path):
    write_jsonl(
        tmp_path / "train.jsonl", [{"id": f"q{i}", "prompt": f"what is the price of plan {i}?"} for i in range(20)]
    )
    write_jsonl(tmp_path / "natural.jsonl", NATURAL)
    cfg = config_from_dict(
        base(eval_sets={"natural": [{"path": "natural.jsonl"}]}, validation=0.0, test_fraction=0.0), tmp_path
    )
    stats = run_prompts(cfg.prompts, tmp_path, tmp_path / "out")
    natural = read_jsonl(tmp_path / "out" / "natural.jsonl")
    assert [r["id"] for r in natural] == ["n0", "n2"]  # n1 is a training prompt, n3 a duplicate of n0
    assert natural[0]["category"] == "billing"
    assert stats["eval_sets"] == {"natural": 2} and stats["train"] == 20
    assert stats["dropped"]["contaminated"] == 1 and stats["dropped"]["exact_duplicate"] == 1
    assert stats["loaded"] == 24
    assert {r["id"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")}.isdisjoint({"n0", "n2"})


def test_retention_warnings_cover_each_set():
    def split(pct):
        return {"models": {"teacher": {"pct_of_teacher": 100.0}, "kd": {"pct_of_teacher": pct}}}

    results = {"test": split(98.0), "ood": split(95.0), "natural": split(80.0)}
    (w,) = retention_warnings(results, {"teacher": "teacher", "kd": "student"})
    assert w["kind"] == "ood_retention" and w["ood_split"] == "natural" and w["points"] == 18.0
    assert w["message"].startswith("kd: 'natural' retention 80.0% of the teacher is 18.0 points below its test")


def test_expansions_never_land_in_an_eval_set(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    """An eval set is in the expand stage's guard: an expansion equal to one of its prompts is dropped."""
    expand = {"enabled": True, "typo": {"share": 1.0}, "wrap": {"share": 1.0}}
    cfg_path = tiny_project(tmp_path, tiny_teacher_dir, tiny_student_dir, expand=expand)
    api.stages(cfg_path, ["prompts", "expand"])
    made = [r for r in read_jsonl(tmp_path / "run" / "expand" / "train.jsonl") if r.get("meta", {}).get("synthetic")]
    copied = [r["messages"][-1]["content"] for r in made[:3]]  # the set now holds three of them
    write_jsonl(tmp_path / "natural.jsonl", [{"id": f"n{i}", "prompt": t} for i, t in enumerate(copied)])
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["prompts"]["eval_sets"] = {"natural": [{"path": "natural.jsonl"}]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    api.stages(cfg_path, ["prompts", "expand"])
    assert len(read_jsonl(tmp_path / "run" / "prompts" / "natural.jsonl")) == 3
    stats = read_json(tmp_path / "run" / "expand" / "stats.json")
    assert stats["contaminated"]["by_split"]["natural"] >= 3
    train = {r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "run" / "expand" / "train.jsonl")}
    assert not train & set(copied)


def test_a_set_is_evaluated_and_reported(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    write_jsonl(tmp_path / "natural.jsonl", NATURAL)
    cfg_path = tiny_project(tmp_path, tiny_teacher_dir, tiny_student_dir)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["prompts"]["eval_sets"] = {"natural": [{"path": "natural.jsonl"}]}
    cfg["eval"].update(splits=["test", "natural"], latency={"queries": 2, "batch_size": 2})
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert load_config(cfg_path).prompts.held_out() == ("validation", "test", "ood", "natural")
    api.stages(cfg_path, ["prompts", "generate", "train", "eval", "measure", "report"])
    run = tmp_path / "run"
    results = read_json(run / "eval" / "results.json")
    assert list(results["splits"]) == ["test", "natural"] and results["splits"]["natural"]["n"] == 2
    assert set(results["contamination"]["splits"]) == {"test", "natural"}
    assert (run / "eval" / "answers" / "sft__natural.jsonl").is_file()
    report = read_json(run / "report" / "report.json")
    assert report["split_sizes"] == {"test": 4, "natural": 2}
    assert set(report["splits"]["natural"]["sft"]["per_category"]) == {"billing", "account"}
    md = (run / "report" / "report.md").read_text()
    html = (run / "report" / "report.html").read_text()
    assert "Per category (Natural)" in md and "Per category (Natural)" in html


def test_eval_warnings_print_brackets_as_text():
    """A warning naming a record or prompt with brackets prints them; rich would swallow '[natural]' as a tag."""
    with console.capture() as cap:
        warn("split [natural]: prompt '[bold]refund[/bold]' copies a training prompt")
    out = cap.get()
    assert "split [natural]: prompt '[bold]refund[/bold]' copies a training prompt" in out and "warning" in out
