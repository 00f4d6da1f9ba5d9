"""Bad input gets one clear line on stderr, exit code 2, no traceback, and keeps what was produced."""

import json
import subprocess
import sys

import pytest
import yaml


def potstill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "potstill.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("potstill: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question number {i} about plan {i * 7}"}) + "\n" for i in range(40)))
    (tmp_path / "notamodel").mkdir()
    cfg = {"run_dir": "run", "prompts": {"sources": [{"path": "p.jsonl"}]},
           "teacher": {"model": "notamodel"}, "student": {"model": "notamodel", "init": "random"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_unknown_config_key(workdir):
    proc = potstill("run", "c.yaml", "train.lrr=0.1", cwd=workdir)
    one_line_error(proc, "unknown config key 'train.lrr'", "did you mean 'lr'")


def test_missing_prompt_file(workdir):
    proc = potstill("prompts", "c.yaml", "prompts.sources=[{path: missing.jsonl}]", cwd=workdir)
    one_line_error(proc, "missing.jsonl")


def test_malformed_prompt_file_names_line(workdir):
    (workdir / "bad.jsonl").write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": \n')
    proc = potstill("prompts", "c.yaml", "prompts.sources=[{path: bad.jsonl}]", cwd=workdir)
    one_line_error(proc, "bad.jsonl", "line 2")


def test_empty_prompt_set(workdir):
    (workdir / "empty.jsonl").write_text('{"id": "a", "prompt": "  "}\n')
    proc = potstill("prompts", "c.yaml", "prompts.sources=[{path: empty.jsonl}]", cwd=workdir)
    one_line_error(proc, "no prompts")


def test_model_path_not_a_model_keeps_prompts(workdir):
    assert potstill("prompts", "c.yaml", cwd=workdir).returncode == 0
    before = (workdir / "run" / "prompts" / "train.jsonl").read_text()
    proc = potstill("run", "c.yaml", cwd=workdir)
    one_line_error(proc, "notamodel", "not a model directory")
    assert (workdir / "run" / "prompts" / "train.jsonl").read_text() == before
    assert not (workdir / "run" / "generate").exists()


def test_unknown_force_stage(workdir):
    one_line_error(potstill("run", "c.yaml", "--force", "genrate", cwd=workdir), "unknown stage 'genrate'")


def test_kd_topk_with_mismatched_tokenizers_fails_before_any_stage(workdir, make_tiny_llama, tiny_teacher_dir):
    student = make_tiny_llama(workdir / "other_student", hidden=16, tokenizer="other")
    proc = potstill("run", "c.yaml", f"teacher.model={tiny_teacher_dir}", f"student.model={student}",
                    "train.methods=[kd]", "train.kd.signal=topk", cwd=workdir)
    line = one_line_error(proc, "train.kd.signal", "token-level", "signal 'live'", "'sft'")
    assert str(student) in line
    assert not (workdir / "run" / "prompts").exists()


def test_kd_with_mismatched_tokenizers_trains_text_level(workdir, make_tiny_llama, tiny_teacher_dir):
    student = make_tiny_llama(workdir / "other_student", hidden=16, tokenizer="other")
    over = [f"teacher.model={tiny_teacher_dir}", f"student.model={student}", "train.methods=[kd]",
            "teacher.max_new_tokens=4", "train.epochs=1", "train.batch_size=8"]
    for cmd in (["prompts"], ["generate"], ["train", "--method", "kd"]):
        proc = potstill(*cmd[:1], "c.yaml", *over, *cmd[1:], cwd=workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kd: tokenizers differ → text-level distillation (SFT on the teacher's answers)" in proc.stderr
    assert json.loads((workdir / "run" / "students" / "kd" / "training.json").read_text())["kd_path"] == "sft"
