"""The student stage (student.init: prune) and the expand stage inside a pipeline run."""

import json

import yaml
from transformers import AutoModelForCausalLM

from potstill import api
from potstill.io import read_json, read_jsonl


def project(tmp_path, teacher, **extra):
    with open(tmp_path / "train.jsonl", "w") as f:
        for i in range(24):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"how do I export the report number {i} as a file?"}) + "\n")
    with open(tmp_path / "test.jsonl", "w") as f:
        for i in range(4):
            f.write(
                json.dumps({"id": f"t{i}", "prompt": f"what does error code E{700 + i} mean for my account?"}) + "\n"
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
        "teacher": {"model": str(teacher), "batch_size": 8, "max_new_tokens": 4},
        "train": {"methods": ["sft"], "epochs": 1, "batch_size": 8, "max_seq_len": 48},
        "eval": {
            "splits": ["test"],
            "max_new_tokens": 4,
            "teacher_forced": False,
            "bootstrap_samples": 100,
            "judge": False,
        },
        "route": {"enabled": False},
        **extra,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


def test_pruned_student_is_trained_and_is_the_floor(tmp_path, tiny_teacher_dir):
    prune = {"num_layers": 1, "hidden_size": 16, "intermediate_size": 32, "calibration_samples": 8, "max_seq_len": 32}
    cfg = project(tmp_path, tiny_teacher_dir, student={"init": "prune", "prune": prune})
    api.stages(cfg, ["prompts", "generate", "student", "train", "eval"])
    student = tmp_path / "run" / "student"
    model = AutoModelForCausalLM.from_pretrained(student)  # a plain Hugging Face directory
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 16
    derived = read_json(student / "prune.json")
    assert derived and (student / "_provenance.json").is_file()
    trained = read_json(tmp_path / "run" / "students" / "sft" / "training.json")
    assert trained["params"] == sum(p.numel() for p in model.parameters())
    assert trained["provenance"]["student_base"] == str(student)
    results = read_json(tmp_path / "run" / "eval" / "results.json")
    assert results["models"]["floor"]["path"] == str(student)


def test_expanded_prompts_are_answered_and_never_evaluated(tmp_path, tiny_teacher_dir, tiny_student_dir):
    expand = {"enabled": True, "typo": {"share": 1.0}, "wrap": {"share": 1.0}, "compose": {"share": 0.5}}
    cfg = project(tmp_path, tiny_teacher_dir, student={"model": str(tiny_student_dir), "init": "random"}, expand=expand)
    api.stages(cfg, ["prompts", "expand", "generate"])
    train = read_jsonl(tmp_path / "run" / "expand" / "train.jsonl")
    synthetic = [r for r in train if (r.get("meta") or {}).get("synthetic")]
    assert synthetic and {r["meta"]["method"] for r in synthetic} >= {"typo", "wrap"}
    answered = {g["id"] for g in read_jsonl(tmp_path / "run" / "generate" / "generations.jsonl")}
    assert answered == {r["id"] for r in train}  # the teacher answers the expanded set
    test = read_jsonl(tmp_path / "run" / "prompts" / "test.jsonl")
    assert {r["id"] for r in test}.isdisjoint(answered) and len(test) == 4
    texts = {r["messages"][-1]["content"] for r in synthetic}
    assert not texts & {r["messages"][-1]["content"] for r in test}
