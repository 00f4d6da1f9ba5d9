"""The registry fixes of issue #13, one test per fix: entries that were matched to the wrong terms
(a forbidden teacher let through, a research-only model read as Apache-2.0, Gemma 4 read as Gemma
Terms), obligations that were left out, and Llama Guard models that came out unknown."""

from __future__ import annotations

import pytest

from potstill.terms import evaluate, load_registry

REG = load_registry()


@pytest.mark.parametrize(
    "teacher",
    [
        "Qwen/Qwen2-72B-Instruct",
        "Qwen/Qwen2-72B",
        "Qwen/Qwen2-VL-72B-Instruct",
        "Qwen/Qwen2-Math-72B-Instruct",
        "qwen2:72b",
    ],
)
def test_qwen2_72b_models_keep_the_tongyi_qianwen_license_and_are_blocked(teacher):
    d = evaluate(teacher)
    assert d.entry.id == "tongyi-qianwen" and d.verdict == "blocked"
    assert "to improve any other large language model (excluding Tongyi Qianwen" in d.message()
    assert evaluate(teacher, use="research", commercial=False).verdict == "blocked"


def test_qwen25_72b_stays_under_the_qwen_license_and_its_72b_card_id_maps_to_tongyi(tmp_path):
    assert evaluate("Qwen/Qwen2.5-72B-Instruct").entry.id == "qwen-license"
    assert evaluate("Qwen/Qwen2.5-72B-Instruct").verdict == "allowed_with_obligations"
    assert "Qwen/Qwen2-72B-Instruct" not in REG.get("qwen-license").examples
    d = tmp_path / "q72"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "README.md").write_text("---\nlicense: other\nlicense_name: tongyi-qianwen\n---\n")
    assert evaluate(str(d)).entry.id == "tongyi-qianwen" and evaluate(str(d)).verdict == "blocked"


def test_qwen25_omni_3b_is_under_the_research_license():
    d = evaluate("Qwen/Qwen2.5-Omni-3B")
    assert d.entry.id == "qwen-research" and d.verdict == "blocked" and "commercial use" in d.message()
    assert evaluate("Qwen/Qwen2.5-Omni-3B", use="research", commercial=False).verdict == "allowed_with_obligations"
    assert REG.match_name("Qwen/Qwen2.5-Omni-7B").id != "qwen-research"


def test_gemma_4_is_apache_and_gemma_1_to_3_keep_the_gemma_terms():
    for name in ("google/gemma-4-e4b-it", "gemma4:e4b", "Gemma 4 E2B It"):
        d = evaluate(name)
        assert d.entry.id == "gemma-4" and d.verdict == "allowed" and d.entry.license.startswith("Apache-2.0"), name
    for name in ("google/gemma-3-4b-it", "gemma3:4b", "google/gemma-2-9b-it", "google/codegemma-7b"):
        assert evaluate(name).entry.id == "gemma", name
    assert evaluate("google/medgemma-4b-it").verdict == "unknown"


@pytest.mark.parametrize("entry_id", ["gemma", "tongyi-qianwen"])
def test_gemma_and_tongyi_qianwen_require_notices_on_modified_files(entry_id):
    assert any(o.startswith("Modified files:") and "prominent notices" in o for o in REG.get(entry_id).obligations)


@pytest.mark.parametrize(
    "teacher,entry_id,verdict",
    [
        ("meta-llama/Llama-Guard-3-8B", "llama-3.1", "allowed_with_obligations"),
        ("llama-guard3:8b", "llama-3.1", "allowed_with_obligations"),
        ("meta-llama/Llama-Guard-3-1B", "llama-3.2", "allowed_with_obligations"),
        ("meta-llama/Llama-Guard-3-11B-Vision", "llama-3.2", "allowed_with_obligations"),
        ("meta-llama/Meta-Llama-Guard-2-8B", "llama-3", "blocked"),
        ("meta-llama/Llama-Guard-4-12B", "llama-4", "allowed_with_obligations"),
    ],
)
def test_llama_guard_models_are_under_their_llama_license(teacher, entry_id, verdict):
    d = evaluate(teacher)
    assert d.entry.id == entry_id and d.verdict == verdict
