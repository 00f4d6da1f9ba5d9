"""Engines: the CTranslate2 conversion and cache, agreement with transformers, config and one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from potstill.config import load_config
from potstill.engines import check_engine, make_generator
from potstill.engines import ct2 as ct2_mod
from potstill.errors import UserError
from potstill.teachers.base import GenerationSettings
from potstill.teachers.hf import LocalGenerator

QUESTIONS = [
    "How do I reset my password?",
    "What is the refund policy?",
    "hi",
    "Can I export my notes to a file, and how long does it take?",
    "Where is the settings page?",
    "Does the app work offline on my phone and on the web?",
]


def records(n: int = 12) -> list[dict]:
    return [
        {"id": f"q{i}", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i // 6)}]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def hf_and_ct2(tiny_teacher_dir):
    return LocalGenerator(tiny_teacher_dir), make_generator("ct2", tiny_teacher_dir)


def test_ct2_greedy_answers_and_top_logprobs_equal_transformers(hf_and_ct2):
    """Token for token on a batch of prompts of different lengths (CTranslate2 feeds the longer ones'
    tails through its decoding loop: those steps must not shift the log-probs)."""
    hf, ct2 = hf_and_ct2
    settings = GenerationSettings(max_new_tokens=12, batch_size=6, top_logprobs=4)
    a, b = list(hf.generate(records(), settings)), list(ct2.generate(records(), settings))
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert [r["finish_reason"] for r in a] == [r["finish_reason"] for r in b]
    assert [r["usage"] for r in a] == [r["usage"] for r in b]
    for ra, rb in zip(a, b):
        assert len(rb["top_logprobs"]) == len(rb["token_ids"])
        for pa, pb in zip(ra["top_logprobs"], rb["top_logprobs"]):
            assert [t for t, _ in pa] == [t for t, _ in pb]
            assert max(abs(x - y) for (_, x), (_, y) in zip(pa, pb)) < 1e-4
    assert ct2.params == hf.params


def test_ct2_never_emits_padding_rows_and_knows_the_context(hf_and_ct2):
    hf, ct2 = hf_and_ct2
    assert ct2.padding and len(ct2.padding) == len(hf.padding_ids)  # the teacher has 8 padded embedding rows
    out = list(ct2.generate(records(6), GenerationSettings(max_new_tokens=16, batch_size=6, top_logprobs=50)))
    assert all(t < ct2.vocab for r in out for t in r["token_ids"])
    assert all(t < ct2.vocab for r in out for step in r["top_logprobs"] for t, _ in step)
    assert ct2.context == hf.context


def test_ct2_sampling_is_seeded(tiny_teacher_dir):
    """The same seed samples the same answers, on a fresh model or on one that has sampled before
    (CTranslate2 seeds a thread's stream once: the generator reloads the model); another seed, others."""
    s = GenerationSettings(max_new_tokens=10, batch_size=4, do_sample=True, temperature=1.5, seed=7)

    def sample(seed: int) -> list[list[int]]:
        gen = make_generator("ct2", tiny_teacher_dir, seed=seed)
        return [r["token_ids"] for r in gen.generate(records(8), replace(s, seed=seed))]

    greedy = [
        r["token_ids"]
        for r in make_generator("ct2", tiny_teacher_dir).generate(records(8), replace(s, do_sample=False))
    ]
    first = sample(7)
    assert first == sample(7)
    assert first != sample(8) and first != greedy


def test_int8_engine_generates_records(tiny_teacher_dir):
    gen = make_generator("ct2-int8", tiny_teacher_dir)
    assert gen.compute_type == "int8"
    out = list(gen.generate(records(4), GenerationSettings(max_new_tokens=6, batch_size=4, top_logprobs=2)))
    assert len(out) == 4 and all(r["finish_reason"] in ("stop", "length") for r in out)
    assert all(len(r["top_logprobs"]) == len(r["token_ids"]) for r in out)


def test_conversion_is_cached_by_content(tmp_path, make_tiny_llama, potstill_cache):
    model = make_tiny_llama(tmp_path / "m", seed=11)
    first = ct2_mod.ct2_model_dir(model)
    assert first.parent == potstill_cache / "ct2" and (first / "model.bin").is_file()
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert ct2_mod.ct2_model_dir(model) == first and (first / "model.bin").stat().st_mtime_ns == stamp
    make_tiny_llama(tmp_path / "m", seed=12)  # new weights in the same folder: a new conversion
    assert ct2_mod.ct2_model_dir(model) != first
    assert json.loads((first / "potstill.json").read_text())["architecture"] == "llama"


def test_unsupported_architecture_is_one_line_and_leaves_nothing(tmp_path):
    from transformers import OlmoConfig, OlmoForCausalLM

    model = tmp_path / "olmo"
    OlmoForCausalLM(
        OlmoConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(model)
    out = tmp_path / "out" / "ct2"
    with pytest.raises(UserError) as e:
        ct2_mod.convert(model, out)
    msg = str(e.value)
    assert "'olmo'" in msg and "engine hf" in msg and "\n" not in msg
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


def test_missing_ctranslate2_names_the_install(monkeypatch, tiny_teacher_dir):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(UserError, match=r"pip install ctranslate2"):
        make_generator("ct2", tiny_teacher_dir)


def test_engine_names_are_checked(tiny_teacher_dir):
    with pytest.raises(UserError, match="unknown engine 'ct3'"):
        check_engine("ct3", "eval.engine")
    with pytest.raises(UserError, match="unknown engine 'vllm'"):
        make_generator("vllm", tiny_teacher_dir)  # vLLM generates for the teacher only
    floor = make_generator("ct2", tiny_teacher_dir, init="random")  # nothing trained to convert: transformers
    assert isinstance(floor, LocalGenerator)


def test_engine_config(tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir):
    path = tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir)
    cfg = load_config(path)
    assert (cfg.teacher.engine, cfg.eval.engine, cfg.eval.latency.engines) == ("ct2", "ct2", None)
    cfg = load_config(path, ["teacher.engine=vllm"])
    assert cfg.teacher.model == f"vllm:{tiny_teacher_dir}" and cfg.teacher.engine == "vllm"
    cfg = load_config(path, [f"teacher.model=vllm:{tiny_teacher_dir}"])
    assert cfg.teacher.engine == "vllm"
    with pytest.raises(UserError, match="eval.engine"):
        load_config(path, ["eval.engine=vllm"])
    with pytest.raises(UserError, match="eval.latency.engines"):
        load_config(path, ["eval.latency.engines=[hf, ct3]"])


def test_teacher_engine_changes_the_generate_hash(tiny_teacher_dir):
    from potstill.config import TeacherConfig
    from potstill.teachers.generate import hashed_teacher_config
    from potstill.teachers.spec import parse_model

    spec = parse_model(str(tiny_teacher_dir))
    default = hashed_teacher_config(TeacherConfig(model=str(tiny_teacher_dir)), spec)
    int8 = hashed_teacher_config(TeacherConfig(model=str(tiny_teacher_dir), engine="ct2-int8"), spec)
    assert "engine" not in default and int8["engine"] == "ct2-int8"


def test_measure_on_ct2(tiny_teacher_dir):
    from potstill.evaluate.measure import measure_model

    perf = measure_model(
        tiny_teacher_dir, records=records(4), max_new_tokens=4, queries=2, batch_size=2, engine="ct2-int8"
    )
    assert perf["engine"] == "ct2-int8" and perf["params"] > 0 and perf["batched_queries_per_s"] > 0


def test_engine_costs_and_table():
    from potstill.config import PricesConfig
    from potstill.evaluate.cost import engine_costs
    from potstill.report.engines import engines_table

    def perf(qps):
        return {"batched_queries_per_s": qps, "latency_p50_s": 1 / qps, "peak_rss_mb": 1.0}

    prices = PricesConfig(teacher={"usd_per_hour": 1.0}, student={"usd_per_hour": 1.0})
    roles = {"teacher": "teacher", "kd": "student"}
    perf_json = {
        "engine": "ct2",
        "engines": {
            "hf": {"teacher": perf(10.0), "kd": perf(20.0)},
            "ct2": {"teacher": perf(40.0), "kd": perf(400.0)},
            "ct2-int8": {"teacher": perf(50.0), "kd": perf(300.0)},
        },
    }
    out = engine_costs(prices, perf_json, roles)
    assert out["by_engine"]["hf"]["kd"]["cost_vs_teacher"] == pytest.approx(0.5)
    assert out["cheapest"]["teacher"]["engine"] == "ct2-int8" and out["cheapest"]["kd"]["engine"] == "ct2"
    assert out["cheapest"]["kd"]["cost_vs_teacher"] == pytest.approx(50 / 400)  # each on its cheapest engine
    assert engine_costs(prices, {"engines": {"ct2": perf_json["engines"]["ct2"]}}, roles) is None
    table = engines_table({"engine": "ct2", "engines": out, "models": {"kd": {"role": "student"}}})
    assert len(table.rows) == 6 and "ct2 (scored)" in [r[0] for r in table.rows]
    assert "kd on ct2 (8.0x cheaper" in table.note


def test_cli_engine_error_is_one_line_exit_2_and_writes_no_stage(
    monkeypatch, capsys, tiny_project, tmp_path, tiny_teacher_dir, tiny_student_dir
):
    from potstill.cli.main import main as cli_main

    path = tiny_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir)
    assert cli_main(["prompts", str(path)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    assert cli_main(["generate", str(path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("potstill: error:")]
    assert len(err) == 1 and "pip install ctranslate2" in err[0] and "engine" in err[0]
    assert not (tmp_path / "run" / "generate").exists() and (tmp_path / "run" / "prompts").is_dir()
    assert cli_main(["generate", str(path), "teacher.engine=hf"]) == 0  # what the line says to use instead


def test_ct2_runs_heads_narrower_or_wider_than_hidden_over_heads(tmp_path, tiny_tokenizer_dir):
    """A pruned student keeps its teacher's head width: ``head_dim * heads != hidden_size``, with grouped
    KV heads (CTranslate2's Llama converter drops ``head_dim``; potstill's conversion puts it back)."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    settings = GenerationSettings(max_new_tokens=8, batch_size=6, top_logprobs=3)
    a = list(LocalGenerator(tmp_path).generate(records(6), settings))
    b = list(make_generator("ct2", tmp_path).generate(records(6), settings))
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    for ra, rb in zip(a, b):
        for pa, pb in zip(ra["top_logprobs"], rb["top_logprobs"]):
            assert max(abs(x - y) for (_, x), (_, y) in zip(pa, pb)) < 1e-4
