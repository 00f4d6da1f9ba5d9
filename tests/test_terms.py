"""Teacher terms: the registry (every entry's matching), the gate (allowed / obligations / blocked /
accepted / unknown), the run directory's terms.json, the model card's section and `potstill terms`."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from potstill.cli.main import main as cli_main
from potstill.config import config_from_dict
from potstill.errors import UserError
from potstill.terms import evaluate, gate, load_registry, match_teacher, preflight_terms, terms_provenance
from potstill.terms.registry import Registry

REG = load_registry()
ENTRY_EXAMPLES = [(e.id, ex) for e in REG.entries for ex in e.examples]
ENTRY_NOT_EXAMPLES = [(e.id, ex) for e in REG.entries for ex in e.not_examples]
ENTRY_LICENSES = [(e.id, li) for e in REG.entries for li in e.license_ids]
ACCEPT = {"who": "Jane Doe, legal", "why": "the student is itself a Llama 3 derivative", "date": "2026-11-28"}


# -- the registry ------------------------------------------------------------------------------


def test_registry_is_versioned_and_every_entry_cites_a_source_and_a_checked_date():
    raw = yaml.safe_load(Path(__import__("potstill.terms.registry", fromlist=["x"]).REGISTRY_PATH).read_text())
    assert set(raw) == {"version", "entries"} and str(raw["version"]).strip()
    assert REG.version == str(raw["version"])
    assert len(REG.entries) >= 30
    for e in REG.entries:
        assert e.source_url.startswith("https://"), e.id
        assert isinstance(e.checked, datetime.date) and e.checked <= datetime.date.today(), e.id
        assert e.clause.strip() and e.license.strip(), e.id
        assert e.examples or e.license_ids, e.id
    # the version moves with every change: it is never older than the newest entry's check
    assert max(e.checked for e in REG.entries).strftime("%Y.%m.%d") <= REG.version
    families = {e.family for e in REG.entries}
    for fam in (
        "Llama",
        "Gemma",
        "Qwen",
        "Mistral",
        "DeepSeek",
        "Phi",
        "OpenAI API",
        "Anthropic API",
        "Google Gemini API",
    ):
        assert fam in families
    assert {"llama-2", "llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4"} <= {e.id for e in REG.entries}


@pytest.mark.parametrize("entry_id,name", ENTRY_EXAMPLES, ids=[f"{i}:{n}" for i, n in ENTRY_EXAMPLES])
def test_each_entry_matches_its_examples_first(entry_id, name):
    e = REG.match_name(name)
    assert e is not None and e.id == entry_id, f"{name!r} matched {e.id if e else None!r}, not {entry_id!r}"


@pytest.mark.parametrize("entry_id,name", ENTRY_NOT_EXAMPLES, ids=[f"{i}:not:{n}" for i, n in ENTRY_NOT_EXAMPLES])
def test_each_entry_rejects_its_counter_examples(entry_id, name):
    e = REG.match_name(name)
    assert e is None or e.id != entry_id


@pytest.mark.parametrize("entry_id,license_id", ENTRY_LICENSES, ids=[f"{i}:{li}" for i, li in ENTRY_LICENSES])
def test_a_local_model_is_matched_by_its_readme_license(tmp_path, entry_id, license_id):
    d = tmp_path / "my-finetune"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "README.md").write_text(f"---\nlicense: other\nlicense_name: {license_id}\n---\n# a model\n")
    m = match_teacher(str(d))
    assert m.entry is not None and m.entry.id == entry_id and "license_name" in m.matched_by


def test_matching_is_case_insensitive_and_most_specific_first():
    assert REG.match_name("META-LLAMA/LLAMA-3.1-8B-INSTRUCT").id == "llama-3.1"
    assert REG.match_name("meta-llama/Meta-Llama-3-8B").id == "llama-3"
    assert REG.match_name("Qwen/Qwen2.5-3B-Instruct").id == "qwen-research"
    assert REG.match_name("Qwen/Qwen2.5-32B-Instruct").id == "qwen-apache"
    assert REG.match_name("totally-new-model") is None


def test_local_directory_names(tmp_path):
    # config.json _name_or_path
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_name_or_path": "google/gemma-2-2b-it"}))
    m = match_teacher(str(d))
    assert m.entry.id == "gemma" and "_name_or_path" in m.matched_by
    # README base_model (a list) wins over a generic license line
    d2 = tmp_path / "support-bot"
    d2.mkdir()
    (d2 / "config.json").write_text("{}")
    (d2 / "README.md").write_text("---\nlicense: apache-2.0\nbase_model:\n- meta-llama/Llama-3.2-1B\n---\n")
    assert match_teacher(str(d2)).entry.id == "llama-3.2"
    # relative to the config's directory; a Hugging Face cache snapshot gives name and revision
    sha = "a" * 40
    d3 = tmp_path / "hub" / "models--mistralai--Mistral-7B-Instruct-v0.3" / "snapshots" / sha
    d3.mkdir(parents=True)
    (d3 / "config.json").write_text("{}")
    m3 = match_teacher(f"hub/models--mistralai--Mistral-7B-Instruct-v0.3/snapshots/{sha}", base_dir=tmp_path)
    assert m3.entry.id == "mistral-apache" and m3.names.revision == sha
    # nothing known
    d4 = tmp_path / "teacher"
    d4.mkdir()
    (d4 / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert match_teacher(str(d4)).entry is None


def test_a_path_is_named_by_its_model_not_its_parent_folders(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_name_or_path": "/home/gemma/work/ckpt-100"}))
    assert match_teacher(str(d)).entry is None
    hub = "/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B/snapshots/" + "b" * 40
    (d / "config.json").write_text(json.dumps({"_name_or_path": hub}))
    m = match_teacher(str(d))
    assert m.entry.id == "llama-3.1" and "meta-llama/Llama-3.1-8B" in m.matched_by
    assert match_teacher("/srv/gemma/not-there").entry is None  # a path that does not exist: its last component
    assert match_teacher("./llama-3.1-8b-local").entry.id == "llama-3.1"


def test_potstill_reference_teacher_by_path_name_or_key(tmp_path):
    d = tmp_path / "examples" / "helpdesk" / "teacher"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    m = match_teacher(str(d))
    assert m.entry.id == "potstill-reference" and m.matched_by.startswith("path")
    assert evaluate(str(d)).verdict == "allowed"
    assert REG.match_name("potstill-helpdesk-teacher").id == "potstill-reference"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"potstill_reference": True, "_name_or_path": "whatever"}))
    assert match_teacher(str(other)).entry.id == "potstill-reference"


def test_api_teachers_fall_back_to_the_providers_terms_on_their_own_endpoint():
    assert match_teacher("openai:gpt-4o-mini").entry.id == "openai-api"
    m = match_teacher("openai:some-future-model")
    assert m.entry.id == "openai-api" and "own endpoint" in m.matched_by
    assert match_teacher("anthropic:some-future-model").entry.id == "anthropic-api"
    # a local OpenAI-compatible server: the model name alone decides
    assert match_teacher("openai:some-future-model", base_url="http://127.0.0.1:8000/v1").entry is None
    assert (
        match_teacher("openai:meta-llama/Llama-3.1-8B-Instruct", base_url="http://127.0.0.1:8000/v1").entry.id
        == "llama-3.1"
    )


def test_invalid_registries_are_refused():
    good = REG.model_dump(mode="json")
    dup = {**good, "entries": good["entries"] + [good["entries"][0]]}
    with pytest.raises(ValueError, match="duplicate entry id"):
        Registry.model_validate(dup)
    bad = json.loads(json.dumps(good))
    del bad["entries"][0]["source_url"]
    with pytest.raises(ValueError, match="source_url"):
        Registry.model_validate(bad)
    bad = json.loads(json.dumps(good))
    bad["entries"][0]["checked"] = "yesterday"
    with pytest.raises(ValueError):
        Registry.model_validate(bad)


# -- the gate ----------------------------------------------------------------------------------


def test_gate_blocked_quotes_the_clause():
    d = evaluate("meta-llama/Meta-Llama-3-8B-Instruct")
    assert d.verdict == "blocked" and d.blocked
    msg = d.message()
    assert msg.startswith(
        "teacher 'meta-llama/Meta-Llama-3-8B-Instruct' matches 'llama-3' (Meta Llama 3 Community "
        f"License, checked {REG.get('llama-3').checked}): its terms forbid using outputs to "
        "improve other LLMs: "
    )
    assert "to improve any other large language model (excluding Meta Llama 3" in msg
    assert msg.endswith("record terms.acceptance (who, why, date) in the config to proceed")
    assert "\n" not in msg


def test_gate_accepted_carries_the_acceptance():
    d = evaluate("meta-llama/Meta-Llama-3-8B-Instruct", acceptance=ACCEPT)
    assert d.verdict == "accepted"
    rec = d.to_dict()
    assert rec["acceptance"] == ACCEPT and rec["entry_id"] == "llama-3" and rec["name_prefix"] == "Llama 3"
    assert rec["reasons"] and rec["obligations"]
    assert "accepted by Jane Doe, legal on 2026-11-28" in d.lines()[0]


def test_gate_unknown_warns_and_continues():
    d = evaluate("acme/secret-model-7b")
    assert d.verdict == "unknown" and not d.blocked and d.entry is None
    assert "matches no entry" in d.lines()[0] and "the run continues" in d.lines()[0]
    assert d.to_dict()["entry_id"] is None


def test_gate_allowed_with_obligations_and_allowed():
    d = evaluate("meta-llama/Llama-3.1-8B-Instruct")
    assert d.verdict == "allowed_with_obligations"
    assert d.to_dict()["name_prefix"] == "Llama" and d.to_dict()["attribution"] == "Built with Llama"
    assert any('"Llama" at the beginning' in o for o in d.obligations)
    assert any(line.startswith("terms:   - ") for line in d.lines())
    assert evaluate("google/gemma-2-9b-it").verdict == "allowed_with_obligations"
    assert evaluate("Qwen/Qwen2.5-7B-Instruct").verdict == "allowed"


@pytest.mark.parametrize("teacher", ["openai:gpt-4o", "anthropic:claude-3-5-sonnet-20241022", "openai:gemini-2.5-pro"])
def test_no_competing_terms_block_training_but_not_evaluation(teacher):
    assert evaluate(teacher).verdict == "blocked"
    assert "compete" in evaluate(teacher).message()
    assert evaluate(teacher, use="research", commercial=False).verdict == "blocked"
    assert evaluate(teacher, use="evaluation").verdict == "allowed_with_obligations"
    assert (
        evaluate(teacher, acceptance={**ACCEPT, "why": "an internal classifier; does not compete"}).verdict
        == "accepted"
    )


def test_non_commercial_licenses_block_commercial_use_only():
    d = evaluate("mistralai/Mistral-Large-Instruct-2411")
    assert d.verdict == "blocked" and "commercial use" in d.message()
    assert (
        evaluate("mistralai/Mistral-Large-Instruct-2411", use="research", commercial=False).verdict
        == "allowed_with_obligations"
    )


def test_acceptance_must_be_complete():
    with pytest.raises(UserError, match="missing: why"):
        evaluate("meta-llama/Meta-Llama-3-8B", acceptance={"who": "me", "why": " ", "date": "2026-11-28"})


# -- the run config, the pipeline's preflight and terms.json ------------------------------------


def _fake_model(d: Path, name_or_path: str | None = None, readme: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"]}
    if name_or_path:
        cfg["_name_or_path"] = name_or_path
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"not really weights")
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    if readme:
        (d / "README.md").write_text(readme)
    return d


def _cfg(tmp_path: Path, teacher: str, name: str = "helpdesk", **terms):
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    student = _fake_model(tmp_path / "student")
    data = {
        "name": name,
        "run_dir": "run",
        "prompts": {"sources": [{"path": "p.jsonl"}]},
        "teacher": {"model": teacher},
        "student": {"model": str(student), "init": "random"},
        "train": {"methods": ["sft"]},
    }
    if terms:
        data["terms"] = terms
    return config_from_dict(data, base_dir=tmp_path)


def test_terms_config_validation(tmp_path):
    cfg = _cfg(tmp_path, "x", use="research", commercial=False, acceptance=dict(ACCEPT))
    assert cfg.terms.acceptance.date == datetime.date(2026, 11, 28) and cfg.terms.use == "research"
    assert _cfg(tmp_path, "x").terms.use == "train_model" and _cfg(tmp_path, "x").terms.commercial is True
    with pytest.raises(UserError, match="terms.acceptance.why"):
        _cfg(tmp_path, "x", acceptance={**ACCEPT, "why": "   "})
    with pytest.raises(UserError, match="terms.acceptance.date"):
        _cfg(tmp_path, "x", acceptance={**ACCEPT, "date": "someday"})
    with pytest.raises(UserError, match="terms.acceptance.who"):
        _cfg(tmp_path, "x", acceptance={"why": "w", "date": "2026-11-28"})
    with pytest.raises(UserError, match="did you mean 'acceptance'"):
        _cfg(tmp_path, "x", acceptanse={})


def test_gate_on_a_config(tmp_path):
    with pytest.raises(UserError) as err:
        gate(_cfg(tmp_path, "openai:gpt-4o-mini"))
    assert "matches 'openai-api'" in str(err.value) and "Use Output to develop models that compete" in str(err.value)
    d = gate(_cfg(tmp_path, "openai:gpt-4o-mini", acceptance=dict(ACCEPT)))
    assert d.verdict == "accepted"
    with pytest.raises(UserError, match="terms.use is 'evaluation'"):
        gate(_cfg(tmp_path, "openai:gpt-4o-mini", use="evaluation"))
    d = gate(_cfg(tmp_path, "openai:meta-llama/Llama-3.1-8B-Instruct", name="support"))
    assert any('does not start with "Llama"' in w for w in d.warnings)
    assert not gate(_cfg(tmp_path, "openai:meta-llama/Llama-3.1-8B-Instruct", name="Llama-support")).warnings
    # without a preflight (e.g. `potstill train` alone) the provenance asks the gate itself
    with pytest.raises(UserError, match="forbid"):
        terms_provenance(_cfg(tmp_path, "meta-llama/Meta-Llama-3-8B"))
    assert terms_provenance(_cfg(tmp_path, "acme/x"))["verdict"] == "unknown"


def test_preflight_writes_terms_json(tmp_path):
    teacher = _fake_model(tmp_path / "llama31-ft", name_or_path="meta-llama/Llama-3.1-8B-Instruct")
    cfg = _cfg(tmp_path, str(teacher))
    said = []
    d = preflight_terms(cfg, None, tmp_path / "run", teacher_hash="f" * 64, say=said.append)
    rec = json.loads((tmp_path / "run" / "terms.json").read_text())
    assert rec["verdict"] == "allowed_with_obligations" and rec["entry_id"] == "llama-3.1"
    assert rec["registry_version"] == REG.version and rec["entry"]["source_url"].startswith("https://")
    assert rec["name_prefix"] == "Llama" and rec["obligations"] == list(REG.get("llama-3.1").obligations)
    info = rec["teacher_info"]
    assert info["kind"] == "local" and info["weights_hash"] == "f" * 64 and info["path"] == str(teacher.resolve())
    assert info["tokenizer"] == str(teacher.resolve()) and len(info["tokenizer_hash"]) == 64
    assert "_name_or_path" in rec["matched_by"]
    assert any("allowed" in s for s in said) and any("- Name:" in s for s in said)
    assert d.to_dict()["entry_id"] == "llama-3.1"


def test_pipeline_preflight_blocks_accepts_and_records(tmp_path):
    from potstill.pipeline import open_run, preflight

    readme = "---\nlicense: llama3\n---\n# fine-tune\n"
    teacher = _fake_model(tmp_path / "my-teacher", readme=readme)
    p = open_run(_cfg(tmp_path, str(teacher)))
    with pytest.raises(UserError) as err:
        preflight(p)
    # a local teacher's verdict says which of its own fields identified it
    assert "matches 'llama-3'" in str(err.value) and "identified from README license 'llama3'" in str(err.value)
    assert not (tmp_path / "run" / "terms.json").exists()
    p = open_run(_cfg(tmp_path, str(teacher), acceptance=dict(ACCEPT)))
    preflight(p)
    assert p.terms.verdict == "accepted"
    rec = json.loads((tmp_path / "run" / "terms.json").read_text())
    assert (
        rec["verdict"] == "accepted" and rec["acceptance"] == ACCEPT and rec["matched_by"] == "README license 'llama3'"
    )
    assert len(rec["teacher_info"]["weights_hash"]) == 64


# -- the model card ----------------------------------------------------------------------------


def _card(tmp_path, terms: dict | None, name="helpdesk") -> str:
    from potstill.train.card import write_model_card

    cfg = _cfg(tmp_path, "x", name=name)
    prov = {"teacher": "t", "teacher_hash": "abc123"}
    if terms is not None:
        prov["terms"] = terms
    out = tmp_path / "card"
    out.mkdir(exist_ok=True)
    return write_model_card(out, "sft", cfg, {"params": 10}, prov).read_text()


def test_model_card_states_the_obligations(tmp_path):
    card = _card(tmp_path, evaluate("meta-llama/Llama-3.1-8B-Instruct").to_dict())
    section = card.split("## Teacher terms and obligations", 1)[1].split("\n## ", 1)[0]
    assert "**Llama 3.1 Community License**" in section and "entry `llama-3.1`" in section
    assert f"checked {REG.get('llama-3.1').checked}" in section and "https://www.llama.com/llama3_1/license/" in section
    assert "Verdict: **allowed with obligations**" in section
    assert '**Its name must start with "Llama"**' in section and "`helpdesk` does not" in section
    assert '**Display "Built with Llama"**' in section
    assert 'include "Llama" at the beginning of any such AI model name' in section
    assert card.index("## Teacher terms and obligations") < card.index("## Provenance")
    named = _card(tmp_path, evaluate("meta-llama/Llama-3.1-8B-Instruct").to_dict(), name="Llama-helpdesk")
    assert "does not: rename" not in named


def test_model_card_accepted_and_unknown(tmp_path):
    card = _card(tmp_path, evaluate("meta-llama/Meta-Llama-3-8B", acceptance=ACCEPT).to_dict())
    assert "Acceptance recorded by Jane Doe, legal on 2026-11-28: the student is itself a Llama 3 derivative" in card
    assert "Restriction: its terms forbid using outputs to improve other LLMs" in card
    assert '**Its name must start with "Llama 3"**' in card
    card = _card(tmp_path, evaluate("acme/secret").to_dict())
    assert "matches no entry of potstill's terms registry" in card and "Verdict: **unknown" in card
    card = _card(tmp_path, None)
    assert "## Teacher terms and obligations" in card and "were not recorded" in card


# -- potstill terms TEACHER ----------------------------------------------------------------------


def test_cli_terms(capsys):
    assert cli_main(["terms", "meta-llama/Llama-3.1-70B-Instruct"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1" in out and "allowed_with_obligations" in out and 'must start with "Llama"' in out
    assert "https://www.llama.com/llama3_1/license/" in out and f"checked {REG.get('llama-3.1').checked}" in out

    assert cli_main(["terms", "openai:gpt-4o"]) == 0
    out = capsys.readouterr().out
    assert "blocked" in out and "terms.acceptance" in out and "Use Output to develop models that compete" in out

    assert cli_main(["terms", "acme/unknown-7b"]) == 0
    assert "unknown" in capsys.readouterr().out

    assert cli_main(["terms", "google/gemma-3-4b-it", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["entry_id"] == "gemma" and rec["verdict"] == "allowed_with_obligations"

    assert cli_main(["terms", "mistralai/Ministral-8B-Instruct-2410", "--use", "research", "--non-commercial"]) == 0
    assert "allowed_with_obligations (research, non-commercial)" in capsys.readouterr().out

    assert cli_main(["terms", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"version {REG.version}" in out and all(e.id in out for e in REG.entries)

    assert cli_main(["terms"]) == 2
    assert "name a TEACHER" in capsys.readouterr().err
