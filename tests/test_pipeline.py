"""End to end: `potstill run` on tiny local models; reruns skip; a kill during training resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from potstill.io import read_json

WORDS = "plan price storage seat refund trial error export password invoice team api limit".split()


def write_prompts(path, n, offset=0):
    with open(path, "w") as f:
        for i in range(n):
            a, b = WORDS[(i + offset) % len(WORDS)], WORDS[(3 * i + offset + 1) % len(WORDS)]
            f.write(
                json.dumps(
                    {"id": f"{path.stem}-{i}", "prompt": f"what is the {a} of {b} number {i + offset}?", "category": a}
                )
                + "\n"
            )


@pytest.fixture
def project(tmp_path, tiny_teacher_dir, tiny_student_dir):
    write_prompts(tmp_path / "train.jsonl", 48)
    write_prompts(tmp_path / "test.jsonl", 6, offset=100)
    write_prompts(tmp_path / "ood.jsonl", 6, offset=200)
    cfg = {
        "name": "tiny",
        "run_dir": "run",
        "seed": 0,
        "prompts": {
            "sources": [{"path": "train.jsonl"}],
            "test": [{"path": "test.jsonl"}],
            "ood": [{"path": "ood.jsonl"}],
            "test_fraction": 0.0,
            "validation": 0.1,
        },
        "teacher": {"model": str(tiny_teacher_dir), "batch_size": 16, "max_new_tokens": 6, "top_logprobs": 4},
        "student": {"model": str(tiny_student_dir), "init": "random"},
        "train": {
            "methods": ["sft", "kd"],
            "epochs": 1,
            "batch_size": 8,
            "lr": 1e-3,
            "save_steps": 2,
            "max_seq_len": 64,
        },
        "eval": {
            "scorer": {"type": "rouge_l"},
            "max_new_tokens": 6,
            "batch_size": 8,
            "latency": {"queries": 2, "batch_size": 2, "engines": ["hf", "ct2"]},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def potstill(cwd, *args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "potstill.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=600, **kw
    )


def test_run_end_to_end_then_rerun_skips(project):
    proc = potstill(project, "run", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = project / "run"
    for stage in ("prompts", "generate", "students/sft", "students/kd", "eval", "measure", "route", "report"):
        prov = read_json(run / stage / "_provenance.json")
        assert prov["stage"] == stage and len(prov["inputs_hash"]) == 64
    assert (run / "config.yaml").is_file()
    gens = [json.loads(ln) for ln in (run / "generate" / "generations.jsonl").read_text().splitlines()]
    assert gens and all(len(g["top_logprobs"]) == len(g["token_ids"]) for g in gens)
    for m in ("sft", "kd"):
        assert (run / "students" / m / "model.safetensors").is_file()
        assert (run / "students" / m / "README.md").is_file()
    report = read_json(run / "report" / "report.json")
    assert set(report["splits"]) == {"test", "ood"}
    assert {report["models"][m]["role"] for m in report["models"]} == {"teacher", "student", "floor"}
    assert report["models"]["kd"]["method"] == "kd" and report["models"]["sft"]["method"] == "sft"
    for m in report["models"].values():
        assert m["params"] > 0 and m["latency_p50_s"] > 0 and m["cost_per_query_usd"] > 0
    assert report["splits"]["test"]["teacher"]["pct_of_teacher"] == pytest.approx(100.0)
    assert report["engine"] == "ct2" and set(report["engines"]["by_engine"]) == {"hf", "ct2"}
    assert read_json(run / "measure" / "perf.json")["models"]["kd"]["engine"] == "ct2"
    assert "## Latency and cost per engine" in (run / "report" / "report.md").read_text()
    assert (run / "report" / "report.html").stat().st_size > 1000
    routing = report["routing"]
    assert set(routing["checks"]) == {"validation", "test", "ood"} and routing["student"]["method"] == "kd"
    assert routing["checks"]["validation"]["calibration"] and routing["target"]["quality_pct_of_teacher"] == 98.0
    assert "Routing: student with teacher fallback" in (run / "report" / "report.md").read_text()
    assert [(p["a"], p["b"]) for p in report["pairs"]["test"]] == [("kd", "sft")]  # later method minus earlier
    assert "## Students compared (Test)" in (run / "report" / "report.md").read_text()
    assert "kd − sft on Test: " in proc.stderr and "Students compared: kd − sft on OOD: " in proc.stdout

    again = potstill(project, "run", "c.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("up to date, skipped") == 8

    forced = potstill(project, "run", "c.yaml", "report.export=[gguf, ct2]", "--force", "report")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert forced.stderr.count("up to date, skipped") == 7
    best = read_json(run / "report" / "report.json")["best_student"]
    exported = run / "report" / "export"
    assert (exported / f"{best}.gguf").is_file() and (exported / f"{best}-ct2" / "model.bin").is_file()
    assert read_json(exported / f"{best}-ct2" / "potstill.json")["provenance"]["method"] == best

    cal = potstill(
        project,
        "route",
        "calibrate",
        "c.yaml",
        "--max-teacher-share",
        "0.5",
        "--signal",
        "mean_logprob",
        "-o",
        "r.json",
    )
    assert cal.returncode == 0, cal.stderr[-3000:]
    assert "eval: up to date, skipped" in cal.stderr and "% to the teacher" in cal.stderr
    assert "▶ route" in cal.stderr and "▶ report" not in cal.stderr
    r = read_json(project / "r.json")
    assert r["router"]["signal"] == "mean_logprob" and r["target"]["max_teacher_share"] == 0.5
    assert r["checks"]["validation"]["share"] <= 0.5 and r["target"]["met"]

    changed = potstill(project, "run", "c.yaml", "eval.max_new_tokens=4")
    assert changed.returncode == 0, changed.stderr[-3000:]
    skipped = [ln.split(":")[0].split()[-1] for ln in changed.stderr.splitlines() if "up to date" in ln]
    assert skipped == ["prompts", "generate", "students/sft", "students/kd"]


def test_generate_then_run_does_not_regenerate(project):
    assert potstill(project, "prompts", "c.yaml").returncode == 0
    assert potstill(project, "generate", "c.yaml").returncode == 0
    before = (project / "run" / "generate" / "generations.jsonl").read_text()
    proc = potstill(project, "run", "c.yaml", "train.methods=[sft]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generate: up to date, skipped" in proc.stderr
    assert (project / "run" / "generate" / "generations.jsonl").read_text() == before


def test_kill_during_training_resumes_without_regenerating(project):
    overrides = ["train.methods=[sft]", "train.epochs=150", "train.save_steps=5"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill.cli.main", "run", "c.yaml", *overrides],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    work = project / "run" / ".work"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if any(work.glob("students-sft/*/checkpoint-*/trainer_state.json")):
                break
            assert proc.poll() is None, "run ended before a checkpoint was written"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within 300 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    gen_file = project / "run" / "generate" / "generations.jsonl"
    before = gen_file.stat().st_mtime_ns
    assert not (project / "run" / "students" / "sft").exists()
    again = potstill(project, "run", "c.yaml", *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generate: up to date, skipped" in again.stderr
    assert "resuming sft training from checkpoint-" in again.stderr
    assert gen_file.stat().st_mtime_ns == before
    training = read_json(project / "run" / "students" / "sft" / "training.json")
    assert training["resumed_from_step"] >= 5


def test_run_with_api_teacher_served_by_potstill(project, tiny_teacher_dir, serve_model):
    """`potstill run` with `teacher.model: openai:NAME`: generate, SFT and top-k KD, eval and report."""
    url, _ = serve_model(tiny_teacher_dir, name="remote-teacher")
    cfg = yaml.safe_load((project / "c.yaml").read_text())
    cfg["teacher"].update(
        {
            "model": "openai:remote-teacher",
            "base_url": url + "/v1",
            "tokenizer": str(tiny_teacher_dir),
            "concurrency": 4,
        }
    )
    cfg["train"]["kd"] = {"signal": "topk"}
    cfg["prices"] = {
        "teacher": {"usd_per_1m_input_tokens": 2.5, "usd_per_1m_output_tokens": 10.0},
        "student": {"usd_per_hour": 0.1},
    }
    (project / "api.yaml").write_text(yaml.safe_dump(cfg))
    from potstill import api

    report = api.run(project / "api.yaml")
    run = project / "run"
    gens = [json.loads(ln) for ln in (run / "generate" / "generations.jsonl").read_text().splitlines()]
    assert gens and all(g["top_logprobs"] and len(g["top_logprobs"]) == len(g["token_ids"]) for g in gens)
    assert read_json(run / "students" / "kd" / "training.json")["method"] == "kd"
    teacher = report["models"]["teacher"]
    assert teacher["role"] == "teacher" and teacher["cost_per_query_usd"] > 0
    assert report["splits"]["test"]["teacher"]["pct_of_teacher"] == pytest.approx(100.0)
    assert (run / ".cache" / "teacher-api.sqlite").is_file()


def test_kd_from_a_captured_signal_store(project):
    """train.kd.signal=store: capture runs once before KD, training loads no teacher, rerun skips both."""
    from potstill import api

    overrides = ["train.methods=[kd]", "train.kd.signal=store", "train.kd.store_draws=16", "train.epochs=1"]
    api.prompts(project / "c.yaml", overrides)
    api.generate(project / "c.yaml", overrides)
    api.train(project / "c.yaml", overrides)
    run = project / "run"
    manifest = read_json(run / "signals" / "manifest.json")
    assert manifest["format"] == "sampled"
    training = read_json(run / "students" / "kd" / "training.json")
    assert training["method"] == "kd" and training["steps"] > 0
    prov = read_json(run / "students" / "kd" / "_provenance.json")
    assert prov["inputs"]["signals"] == read_json(run / "signals" / "_provenance.json")["inputs_hash"]
