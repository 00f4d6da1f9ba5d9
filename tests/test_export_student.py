"""``potstill export``: a student as a CTranslate2 directory or GGUF file, with its card and provenance."""

from __future__ import annotations

import json

import pytest

from potstill.cli.main import main as cli_main
from potstill.teachers.base import GenerationSettings
from potstill.teachers.hf import LocalGenerator


@pytest.fixture(scope="module")
def student(tmp_path_factory, make_tiny_llama):
    """A tiny student with the model card and training.json a trained one has."""
    d = make_tiny_llama(tmp_path_factory.mktemp("exp") / "kd", seed=5)
    (d / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny: kd student\n")
    prov = {
        "teacher": "/models/teacher",
        "teacher_hash": "ab" * 32,
        "terms": {"entry_id": "ref", "entry": {"license": "Apache-2.0", "outputs_may_train_models": "yes"}},
    }
    (d / "training.json").write_text(json.dumps({"method": "kd", "provenance": prov}))
    return d


def greedy(gen, n: int = 6) -> list[list[int]]:
    recs = [{"id": f"{i}", "messages": [{"role": "user", "content": f"question {i} about plans"}]} for i in range(n)]
    return [r["token_ids"] for r in gen.generate(recs, GenerationSettings(max_new_tokens=8, batch_size=n))]


def test_ct2_export_answers_like_the_directory_and_carries_card_and_provenance(student, tmp_path, capsys):
    import ctranslate2

    from potstill.engines.ct2 import CT2Generator

    out = tmp_path / "kd-ct2"
    assert cli_main(["export", str(student), str(out), "--format", "ct2"]) == 0
    assert "export:" in capsys.readouterr().err
    assert (out / "README.md").read_text().startswith("---\nlicense: apache-2.0")
    prov = json.loads((out / "potstill.json").read_text())["provenance"]
    assert prov["teacher"] == "/models/teacher" and prov["teacher_license"] == "Apache-2.0"
    assert prov["teacher_outputs_may_train_models"] == "yes" and prov["method"] == "kd"
    gen = CT2Generator(student)
    gen.model = ctranslate2.Generator(str(out))  # the exported directory, not the cached conversion
    assert greedy(gen) == greedy(LocalGenerator(student))
    assert (out / "tokenizer.json").is_file()  # self-contained: the tokenizer travels with it


def test_gguf_export_metadata(student, tmp_path):
    import gguf

    out = tmp_path / "kd.gguf"
    assert cli_main(["export", str(student), str(out), "--format", "gguf", "--type", "q8_0"]) == 0
    reader = gguf.GGUFReader(out)
    field = reader.get_field("potstill.provenance")
    prov = json.loads(field.contents())
    assert prov["teacher_hash"] == "ab" * 32 and prov["teacher_terms_entry"] == "ref"
    assert reader.get_field("general.license").contents() == "Apache-2.0"
    assert "kd student" in reader.get_field("general.description").contents()


def test_export_errors_are_one_line(student, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert cli_main(["export", str(student), str(tmp_path / "taken"), "--format", "ct2"]) == 2
    assert "OUT exists" in capsys.readouterr().err
    assert cli_main(["export", str(student), str(tmp_path / "x.gguf"), "--format", "gguf", "--type", "int8"]) == 2
    assert "--type int8 is not a gguf type" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "y"), "--format", "ct2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written
