"""The student stage (student.init: prune) and the expand stage inside a pipeline run."""

from transformers import AutoModelForCausalLM

from potstill import api
from potstill.io import read_json, read_jsonl


def test_pruned_student_is_trained_and_is_the_floor(tiny_project, tmp_path, tiny_teacher_dir):
    prune = {"num_layers": 1, "hidden_size": 16, "intermediate_size": 32, "calibration_samples": 8, "max_seq_len": 32}
    cfg = tiny_project(tmp_path, tiny_teacher_dir, student={"init": "prune", "prune": prune}, floor=True)
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


def test_expanded_prompts_are_answered_and_never_evaluated(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    expand = {"enabled": True, "typo": {"share": 1.0}, "wrap": {"share": 1.0}, "compose": {"share": 0.5}}
    cfg = tiny_project(tmp_path, tiny_teacher_dir, tiny_student_dir, expand=expand)
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
