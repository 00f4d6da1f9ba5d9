"""Bad input gets one clear line on stderr, exit code 2, no traceback, and keeps what was produced."""

import json
import subprocess
import sys

import pytest
import yaml


def potstill(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "potstill.cli.main", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
    (tmp_path / "p.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"question number {i} about plan {i * 7}"}) + "\n" for i in range(40)
        )
    )
    (tmp_path / "notamodel").mkdir()
    cfg = {
        "run_dir": "run",
        "prompts": {"sources": [{"path": "p.jsonl"}]},
        "teacher": {"model": "notamodel"},
        "student": {"model": "notamodel", "init": "random"},
    }
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
    proc = potstill(
        "run",
        "c.yaml",
        f"teacher.model={tiny_teacher_dir}",
        f"student.model={student}",
        "train.methods=[kd]",
        "train.kd.signal=topk",
        cwd=workdir,
    )
    line = one_line_error(proc, "train.kd.signal", "token-level", "signal 'live'", "'sft'")
    assert str(student) in line
    assert not (workdir / "run" / "prompts").exists()


def test_kd_with_mismatched_tokenizers_trains_text_level(workdir, make_tiny_llama, tiny_teacher_dir):
    student = make_tiny_llama(workdir / "other_student", hidden=16, tokenizer="other")
    over = [
        f"teacher.model={tiny_teacher_dir}",
        f"student.model={student}",
        "train.methods=[kd]",
        "teacher.max_new_tokens=4",
        "train.epochs=1",
        "train.batch_size=8",
    ]
    for cmd in (["prompts"], ["generate"], ["train", "--method", "kd"]):
        proc = potstill(*cmd[:1], "c.yaml", *over, *cmd[1:], cwd=workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kd: tokenizers differ → text-level distillation (SFT on the teacher's answers)" in proc.stderr
    assert json.loads((workdir / "run" / "students" / "kd" / "training.json").read_text())["kd_path"] == "sft"


# -- issue #13: inputs that used to crash, or to pass when they should not ------------------------


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("potstill: error:")]


def long_prompt(n_chars: int) -> str:
    words = [f"w{i % 997}x{i % 13}" for i in range(n_chars // 8 + 1)]
    return " ".join(words)[:n_chars]


def add_prompt(workdir, rid: str, text: str) -> None:
    with open(workdir / "p.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": rid, "prompt": text}) + "\n")


@pytest.fixture
def teacher256(workdir, make_tiny_llama):
    """A local teacher whose context is 256 tokens."""
    return make_tiny_llama(workdir / "teacher256", hidden=16, max_positions=256)


def test_too_long_prompt_is_dropped_and_counted(workdir, teacher256):
    add_prompt(workdir, "huge", long_prompt(1_000_000))
    proc = potstill("prompts", "c.yaml", f"teacher.model={teacher256}", "teacher.max_new_tokens=64", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "too_long=1" in proc.stderr
    stats = json.loads((workdir / "run" / "prompts" / "stats.json").read_text())
    assert stats["dropped"]["too_long"] == 1 and stats["loaded"] == 41
    assert stats["max_prompt_tokens"]["limit"] == 256 - 64
    kept = [
        json.loads(ln)["id"]
        for s in ("train", "validation", "test")
        for ln in (workdir / "run" / "prompts" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert len(kept) == 40 and "huge" not in kept


def test_too_long_prompt_error_policy_names_it(workdir, teacher256):
    add_prompt(workdir, "huge", long_prompt(20_000))
    proc = potstill("prompts", "c.yaml", f"teacher.model={teacher256}", "prompts.too_long=error", cwd=workdir)
    line = one_line_error(
        proc, "p.jsonl line 41", "prompt 'huge' has", "over the limit of 192", "teacher.max_new_tokens 64"
    )
    assert "max_position_embeddings" in line
    assert not (workdir / "run" / "prompts").exists()


def test_too_long_prompt_reaching_generate_is_one_line(workdir, teacher256):
    """A prompt past the teacher's context (here let through on purpose) stops generate before any
    allocation sized by it: one line naming the prompt and the lengths, no generate stage."""
    add_prompt(workdir, "huge", long_prompt(1_000_000))
    over = [
        f"teacher.model={teacher256}",
        "prompts.max_prompt_tokens=10000000",
        "prompts.validation=0",
        "prompts.test_fraction=0",
    ]
    assert potstill("prompts", "c.yaml", *over, cwd=workdir).returncode == 0
    proc = potstill("generate", "c.yaml", *over, cwd=workdir)
    one_line_error(proc, "1 prompt(s) too long for the teacher", "'huge'", "the context is 256", "--force prompts")
    assert not (workdir / "run" / "generate").exists()


def test_run_dir_that_is_a_file(workdir):
    (workdir / "afile").write_text("not a folder\n")
    proc = potstill("prompts", "c.yaml", "run_dir=afile", cwd=workdir)
    one_line_error(proc, "afile", "run_dir is an existing file, not a directory")
    assert (workdir / "afile").read_text() == "not a folder\n"


def test_every_bad_config_value_reported(workdir):
    proc = potstill(
        "run", "c.yaml", "train.epochs=-3", "train.lr=-1", "train.lrr=0.1", "teacher.batch_size=0", cwd=workdir
    )
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 4, proc.stderr
    for needle in (
        "config key 'train.epochs': Input should be greater than 0 (got -3)",
        "config key 'train.lr': Input should be greater than 0 (got -1)",
        "unknown config key 'train.lrr' (did you mean 'lr'?)",
        "config key 'teacher.batch_size'",
    ):
        assert sum(needle in ln for ln in lines) == 1, (needle, lines)
    assert not (workdir / "run").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_utf8_bom_is_accepted(workdir, fmt):
    rows = [{"id": f"b{i}", "prompt": f"bom question {i} about plan {i * 3}"} for i in range(20)]
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "id,prompt\r\n" + "".join(f"{r['id']},{r['prompt']}\r\n" for r in rows)
    (workdir / f"bom.{fmt}").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    proc = potstill("prompts", "c.yaml", f"prompts.sources=[{{path: bom.{fmt}}}]", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((workdir / "run" / "prompts" / "stats.json").read_text())
    assert stats["loaded"] == 20 and sum(stats[s] for s in ("train", "validation", "test")) == 20
    train = [json.loads(ln) for ln in (workdir / "run" / "prompts" / "train.jsonl").read_text().splitlines()]
    assert all(r["id"].startswith("b") and r["meta"] == {} for r in train)


def test_direct_generate_skips_prompts_past_a_local_teachers_context(workdir, teacher256):
    add_prompt(workdir, "huge", long_prompt(50_000))
    proc = potstill(
        "generate", "--teacher", teacher256, "--prompts", "p.jsonl", "--out", "o", "--max-new-tokens", "4", cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 prompts longer than 252 tokens (the teacher's context 256" in proc.stderr
    ids = [json.loads(ln)["id"] for ln in (workdir / "o" / "generations.jsonl").read_text().splitlines()]
    assert len(ids) == 40 and "huge" not in ids
    (workdir / "afile").write_text("x")
    proc = potstill("generate", "--teacher", teacher256, "--prompts", "p.jsonl", "--out", "afile", cwd=workdir)
    one_line_error(proc, "--out is an existing file")
