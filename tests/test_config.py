"""Config validation: unknown keys name themselves and suggest the closest key; overrides apply."""

import pytest

from potstill.config import apply_overrides, config_from_dict, load_config
from potstill.errors import UserError

BASE = {
    "prompts": {"sources": [{"path": "p.jsonl"}]},
    "teacher": {"model": "t"},
    "student": {"model": "s"},
}


def cfg(**extra):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    data.update(extra)
    return data


def test_valid_config_defaults(tmp_path):
    c = config_from_dict(cfg(), base_dir=tmp_path)
    assert c.train.methods == ["sft", "kd"]
    assert c.resolve("t") == (tmp_path / "t").resolve()


def test_unknown_nested_key_suggests_closest(tmp_path):
    with pytest.raises(UserError) as e:
        config_from_dict(cfg(train={"lrr": 1e-3}), base_dir=tmp_path, source="c.yaml")
    msg = str(e.value)
    assert "c.yaml" in msg and "'train.lrr'" in msg and "did you mean 'lr'" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'teachr'.*did you mean 'teacher'"):
        config_from_dict(cfg(teachr={}), base_dir=tmp_path)


def test_unknown_key_inside_list_item(tmp_path):
    data = cfg()
    data["prompts"] = {"sources": [{"path": "p.jsonl", "promt_field": "q"}]}
    with pytest.raises(UserError, match=r"prompts\.sources\.0\.promt_field.*did you mean 'prompt_field'"):
        config_from_dict(data, base_dir=tmp_path)


def test_bad_value_and_missing_key(tmp_path):
    with pytest.raises(UserError, match=r"train\.lr"):
        config_from_dict(cfg(train={"lr": -1}), base_dir=tmp_path)
    data = cfg()
    del data["teacher"]
    with pytest.raises(UserError, match="missing required config key 'teacher'"):
        config_from_dict(data, base_dir=tmp_path)


def test_dotted_overrides_parse_yaml_values(tmp_path):
    c = config_from_dict(
        cfg(), base_dir=tmp_path, overrides=["train.lr=1e-4", "train.methods=[sft]", "train.lora.enabled=true"]
    )
    assert c.train.lr == 1e-4 and c.train.methods == ["sft"] and c.train.lora.enabled is True
    with pytest.raises(UserError, match="not of the form"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        config_from_dict(cfg(), base_dir=tmp_path, overrides=["train.epoch=2"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [\n  - a\n b: c\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: malformed YAML"):
        load_config(bad)
