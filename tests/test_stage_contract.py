"""The stage contract: one table of stages, hashes that cover what an output depends on, one teacher spec."""

import json
from pathlib import Path

import pytest

from potstill import api, pipeline
from potstill.config import load_config
from potstill.context import RunContext, Stage, hashed
from potstill.errors import UserError
from potstill.teachers import generate as gen_mod
from potstill.teachers import hf
from potstill.teachers import spec as spec_mod
from potstill.train.stage import hashed_student


def count_generate_calls(monkeypatch) -> list:
    calls = []
    real = hf.LocalGenerator.generate

    def counted(self, records, *a, **k):
        calls.append(len(records))
        yield from real(self, records, *a, **k)

    monkeypatch.setattr(hf.LocalGenerator, "generate", counted)
    return calls


def test_every_stage_has_the_contract_shape():
    names = [s.name for s in pipeline.STAGES]
    assert names == [
        "prompts",
        "expand",
        "generate",
        "student",
        "signals",
        "train",
        "eval",
        "measure",
        "route",
        "report",
    ]
    for s in pipeline.STAGES:
        assert isinstance(s, Stage) and type(s).inputs is not Stage.inputs and type(s).build is not Stage.build


def test_changing_the_judge_reuses_the_cached_answers(
    tiny_project, monkeypatch, tmp_path, tiny_teacher_dir, tiny_student_dir
):
    """eval.judge (and the scorer) change the eval stage's hash, but not a single answer is generated again."""
    cfg_path = tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir)
    api.stages(cfg_path, ["prompts", "generate", "train", "eval"])
    calls = count_generate_calls(monkeypatch)
    first = json.loads((tmp_path / "run" / "eval" / "_provenance.json").read_text())["inputs_hash"]
    judged = api.stages(
        cfg_path, ["eval"], overrides=["eval.judge={max_examples: 3, max_new_tokens: 4}", "eval.scorer={type: chrf}"]
    )
    assert judged.hashes["eval"] != first  # the stage reran ...
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["scorer"] == "chrf" and results["judge"] is not None
    answer_calls = [n for n in calls if n == 4]  # ... each model's 4 test prompts were not answered again:
    assert answer_calls == [], calls  # the only generations are the judge's own replies
    assert all(m["answers_cached"] for m in results["models"].values())


def test_a_default_added_to_the_config_changes_no_hash(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    cfg = load_config(tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir))
    same = cfg.model_copy(update={"train": cfg.train.model_copy(update={"weight_decay": 0.0})})  # the default, set
    assert hashed(cfg.train) == hashed(same.train)
    assert "weight_decay" not in hashed(cfg.train) and hashed(cfg.train)["epochs"] == 1.0


def test_prune_sizes_hash_only_a_pruned_student(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    """Pruning sizes left in a config whose student starts at random shape nothing: its students keep their hash."""
    path = tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir)

    def student(*overrides):
        return hashed_student(load_config(path, list(overrides)).student)

    assert student("student.prune.hidden_size=16") == student() and "prune" not in student()
    assert student("student.init=prune", "student.prune.hidden_size=16")["prune"] == {"hidden_size": 16}


def test_train_force_signals_recaptures(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, capsys):
    from potstill.cli.main import main

    cfg_path = tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir)
    over = ["train.methods=[kd]", "train.kd.signal=store", "train.kd.store_format=topk"]
    assert main(["prompts", str(cfg_path)]) == 0 and main(["generate", str(cfg_path)]) == 0
    assert main(["train", str(cfg_path), *over]) == 0
    stamp = (tmp_path / "run" / "signals" / "_provenance.json").read_text()
    capsys.readouterr()
    assert main(["train", str(cfg_path), *over, "--force", "signals"]) == 0
    err = capsys.readouterr().err
    assert "▶ signals" in err and "students/kd: up to date" in err  # recaptured; same inputs, student kept
    assert (tmp_path / "run" / "signals" / "_provenance.json").read_text() != stamp


def test_unknown_force_stage_names_the_stages(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    cfg = load_config(tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir))
    with pytest.raises(UserError, match="stages: prompts, expand, generate, student, signals, train"):
        pipeline.open_run(cfg, {"signal"})


class EchoGenerator:
    """A toy backend: answers each prompt with its own last message, reversed."""

    def __init__(self, cfg, spec, seed):
        self.spec = spec

    def generate(self, records, settings, on_batch=None, check_context=False):
        out = [
            {
                "id": r["id"],
                "text": r["messages"][-1]["content"][::-1],
                "finish_reason": "stop",
                "token_ids": None,
                "top_logprobs": None,
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
            for r in records
        ]
        if on_batch:
            on_batch(out)
        yield from out


def test_a_new_teacher_kind_is_one_kind_and_one_backend(tiny_project, monkeypatch, tmp_path, tiny_student_dir):
    """Adding a kind of teacher touches potstill.teachers only: a Kind and (when it generates differently) a backend."""
    kinds = [spec_mod.Kind("echo", lambda rest, resolve: (rest, None), prefix="echo"), *spec_mod.KINDS]
    monkeypatch.setattr(spec_mod, "KINDS", kinds)
    monkeypatch.setitem(gen_mod.GENERATORS, "echo", EchoGenerator)
    cfg_path = tiny_project(tmp_path, "echo:mirror", tiny_student_dir)
    ctx = RunContext.open(load_config(cfg_path))
    assert (ctx.teacher.kind, ctx.teacher.name, ctx.teacher.is_api, ctx.teacher.display) == (
        "echo",
        "mirror",
        False,
        "echo:mirror",
    )
    api.stages(cfg_path, ["prompts", "generate"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "generate" / "generations.jsonl").read_text().splitlines()]
    assert rows and all(r["text"].endswith("tahw") for r in rows)


def test_malformed_model_specs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="teacher.model: 'openai:' names no model"):
        spec_mod.parse_model("openai:")
    with pytest.raises(UserError, match="base_url is only for API models"):
        spec_mod.parse_model(str(tmp_path), base_url="http://x")
    s = spec_mod.parse_model(str(tmp_path / "m.gguf"))
    assert s.kind == "gguf" and s.is_local and not s.is_api
    assert spec_mod.parse_model("vllm:some/dir", lambda p: Path("/abs") / p).path == Path("/abs/some/dir")
