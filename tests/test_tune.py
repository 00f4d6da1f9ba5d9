"""`potstill tune`: the search space is checked at load, trials are child runs of the shared teacher
stages, the study resumes, and best.yaml names the winner."""

from __future__ import annotations

import json
import sys

import optuna
import pytest
import yaml

from potstill import api
from potstill.cli.main import main
from potstill.config import load_config
from potstill.errors import UserError
from potstill.tune.search import default_space

PROMPTS = {"sources": [{"path": "train.jsonl"}], "validation": 0.25, "test_fraction": 0.0}


def project(tiny_project, tmp_path, teacher, student, **tune):
    """A tiny kd project whose validation split holds 5 prompts."""
    return tiny_project(
        tmp_path,
        str(teacher),
        student,
        prompts=PROMPTS,
        train={"methods": ["kd"], "epochs": 1, "batch_size": 8, "max_seq_len": 48},
        tune=tune,
    )


def test_bad_space_keys_are_one_line_each(tiny_project, tmp_path):
    space = {
        "train.kd.temprature": {"low": 1, "high": 4},
        "teacher.temperature": {"low": 1, "high": 2},
        "train.kd.alpha": {"low": 0.5, "high": 2},
        "train.lr_scheduler": {"low": 1, "high": 2},
        "train.kd.divergence": {"choices": ["forward_kl", "kl"]},
    }
    cfg = project(tiny_project, tmp_path, "teacher", {"model": "student"}, space=space)
    with pytest.raises(UserError) as err:
        load_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 5  # one per bad key (in the YAML's order)
    text = "\n".join(lines)
    assert "unknown config key 'train.kd.temprature' (did you mean 'temperature'?)" in text
    assert "tune.space 'teacher.temperature': only train.* settings" in text
    assert "'train.kd.alpha': Input should be less than or equal to 1 (got 2.0)" in text
    assert "'train.lr_scheduler': Input should be a valid string" in text
    assert "'train.kd.divergence': Input should be 'forward_kl'" in text and "(got 'kl')" in text


def test_a_malformed_distribution_names_its_key(tiny_project, tmp_path):
    cfg = project(tiny_project, tmp_path, "t", {"model": "s"}, space={"train.lr": {"low": 1e-3, "hi": 1e-2}})
    with pytest.raises(UserError, match=r"unknown config key 'tune\.space\.train\.lr\.hi' \(did you mean 'high'\?\)"):
        load_config(cfg)
    cfg = project(tiny_project, tmp_path, "t", {"model": "s"}, space={"train.lr": {"low": 0, "high": 1, "log": True}})
    with pytest.raises(UserError, match=r"config key 'tune\.space\.train\.lr': log needs low > 0"):
        load_config(cfg)


def test_the_default_kd_space_fits_the_signal(tiny_project, tmp_path):
    path = project(tiny_project, tmp_path, "t", {"model": "s"})
    cfg = load_config(path)
    assert set(default_space(cfg, "kd")) == {
        "train.lr",
        "train.kd.temperature",
        "train.kd.alpha",
        "train.kd.divergence",
    }
    topk = load_config(path, ["train.kd.signal=topk"])
    assert "train.kd.divergence" not in default_space(topk, "kd")
    assert set(default_space(cfg, "sft")) == {"train.lr", "train.warmup_ratio", "train.weight_decay"}


def test_cli_prints_one_line_for_a_bad_key(tiny_project, tmp_path, capsys):
    cfg = project(tiny_project, tmp_path, "t", {"model": "s"}, space={"train.kd.temprature": {"low": 1, "high": 4}})
    assert main(["tune", str(cfg), "--trials", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("potstill: error: ") and "temprature" in err[0]


def test_missing_optuna_is_one_line(tiny_project, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    cfg = project(tiny_project, tmp_path, "t", {"model": "s"})
    assert main(["tune", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == "potstill: error: potstill tune needs Optuna: pip install potstill[tune]"


def test_trials_are_child_runs_that_resume(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, capsys):
    space = {"train.kd.temperature": {"low": 1, "high": 4}, "train.kd.divergence": {"choices": ["forward_kl", "jsd"]}}
    cfg = project(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, space=space, seed=3)
    run = tmp_path / "run"

    assert main(["tune", str(cfg), "--trials", "2"]) == 0
    out = capsys.readouterr()
    assert "potstill tune:" in out.out and "train.kd.temperature" in out.out and "best trial" in out.err
    result = api.tune(cfg, trials=2)  # done: runs nothing
    assert "▶ trial" not in capsys.readouterr().err
    assert [r["state"] for r in result["trials"]] == ["complete", "complete"]
    dirs = [run / r["dir"] for r in result["trials"]]
    assert len(set(dirs)) == 2 and all(d.parent.parent == run / "tune" for d in dirs)
    for row, d in zip(result["trials"], dirs):
        # the shared stages are the parent's folders, provenance and all; train and eval are the trial's own
        assert (d / "generate").is_symlink() and (d / "generate").resolve() == (run / "generate").resolve()
        assert not (d / "students").is_symlink()
        prov = json.loads((d / "students" / "kd" / "_provenance.json").read_text())
        assert prov["inputs"]["train"]["kd"]["temperature"] == pytest.approx(row["params"]["train.kd.temperature"])
        trial_cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert trial_cfg["train"]["kd"]["divergence"] == row["params"]["train.kd.divergence"]
        assert trial_cfg["eval"]["splits"] == ["validation"] and trial_cfg["train"]["methods"] == ["kd"]
        results = json.loads((d / "eval" / "results.json").read_text())
        assert list(results["splits"]) == ["validation"]
        assert results["splits"]["validation"]["models"]["kd"]["pct_of_teacher"] == pytest.approx(row["value"])
        assert not (d / "measure").exists() and not (d / "report").exists()
    assert not (run / "students").exists()  # the parent ran only the stages before train
    assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["splits"] == ["test"]  # the config as given

    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    top = max(result["trials"], key=lambda r: r["value"])
    assert best["trial"] == top["trial"] and best["value"] == pytest.approx(top["value"])
    assert best["overrides"] == top["params"] and best["dir"] == top["dir"]
    assert len((run / "tune" / "trials.jsonl").read_text().splitlines()) == 2

    # a trial left running by a killed process is retried with its values, in its folder
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{run / 'tune' / 'study.db'}")
    study.enqueue_trial({"train.kd.temperature": 2.0, "train.kd.divergence": "forward_kl"})
    killed = study.ask()
    killed.suggest_float("train.kd.temperature", 1, 4)
    killed.suggest_categorical("train.kd.divergence", ["forward_kl", "jsd"])
    killed.set_user_attr("dir", str(run / "tune" / result["study"] / "trial-0002"))
    last = api.tune(cfg, trials=3)
    states = {r["trial"]: r["state"] for r in last["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "interrupted", 3: "complete"}
    retried = last["trials"][3]
    assert retried["params"] == {"train.kd.temperature": 2.0, "train.kd.divergence": "forward_kl"}
    assert retried["dir"].endswith("trial-0002")


def test_failing_trials_are_one_line_and_three_in_a_row_stop(
    tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, capsys
):
    # each value is valid on its own; together (a divergence that needs the live teacher, topk signals) they are not
    space = {"train.kd.signal": {"choices": ["topk"]}, "train.kd.divergence": {"choices": ["jsd"]}}
    cfg = project(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir, space=space)
    assert main(["tune", str(cfg), "--trials", "5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("failed: config key 'train.kd': divergence 'jsd' needs the teacher's full distribution") == 3
    last = err.strip().splitlines()[-1]
    assert last.startswith("potstill: error: 3 trials in a row failed; the last, trial 2: config key 'train.kd'")
    assert last.endswith("(got {'divergence': 'jsd', 'signal': 'topk'})")  # only the settings given
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert "needs the teacher's full distribution" in study.trials[0].user_attrs["error"]


def test_sft_is_searched_with_its_default_space(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    cfg = project(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir)
    result = api.tune(cfg, trials=1, method="sft")
    (row,) = result["trials"]
    assert row["state"] == "complete" and set(row["params"]) == {"train.lr", "train.warmup_ratio", "train.weight_decay"}
    trial_cfg = yaml.safe_load((tmp_path / "run" / row["dir"] / "config.yaml").read_text())
    assert trial_cfg["train"]["methods"] == ["sft"] and trial_cfg["train"]["lr"] == row["params"]["train.lr"]
    best = yaml.safe_load((tmp_path / "run" / "tune" / "best.yaml").read_text())
    assert best["method"] == "sft" and best["trial"] == 0
