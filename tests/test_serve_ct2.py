"""``potstill serve --engine ct2``: the official ``openai`` client against :class:`CT2Backend` on a tiny
model, checked against :class:`HFBackend` on the same model (greedy ids, logprobs, confidence steps)."""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from potstill.cli.main import main as cli_main
from potstill.serve import CT2Backend, HFBackend, make_backend

pytest.importorskip("ctranslate2")

Q = [{"role": "user", "content": "What is two plus two?"}]
PROMPTS = [
    [{"role": "user", "content": "hi"}],
    Q,
    [{"role": "user", "content": "Name a large animal, then say which planet is red and why."}],
]


@pytest.fixture(scope="module")
def clients(tiny_teacher_dir, serve_model):
    """``{"ct2": client, "hf": client, "ct2_backend", "hf_backend"}``: the tiny teacher served on both engines."""
    out = {}
    for engine in ("ct2", "hf"):
        backend = make_backend(tiny_teacher_dir, engine, model_name="tiny", max_batch=16, batch_wait_ms=30)
        url, _ = serve_model(backend=backend)
        out[engine] = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        out[f"{engine}_backend"] = backend
    assert isinstance(out["ct2_backend"], CT2Backend) and type(out["hf_backend"]) is HFBackend
    return out


def chat(client, **kw):
    kw.setdefault("messages", Q)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", **kw)


def streamed(client, **kw):
    """(text, finish_reason, logprob entries, content chunks) collected from a stream."""
    text, finish, entries, chunks = "", None, [], 0
    for c in chat(client, stream=True, **kw):
        for ch in c.choices:
            text += ch.delta.content or ""
            chunks += bool(ch.delta.content)
            finish = ch.finish_reason or finish
            entries += ch.logprobs.content if ch.logprobs and ch.logprobs.content else []
    return text, finish, entries, chunks


def assert_same_logprobs(a, b):
    assert [e.token_id for e in a] == [e.token_id for e in b]
    assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-4)
    for ea, eb in zip(a, b):
        assert [t.token_id for t in ea.top_logprobs] == [t.token_id for t in eb.top_logprobs]
        assert [t.logprob for t in ea.top_logprobs] == pytest.approx([t.logprob for t in eb.top_logprobs], abs=1e-4)


def test_greedy_answers_and_logprobs_match_hf(clients):
    """Concurrent prompts of different lengths (batched: CTranslate2 forces the longer prompts' tails)."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        ct2 = list(
            pool.map(lambda m: chat(clients["ct2"], messages=m, max_tokens=12, logprobs=True, top_logprobs=4), PROMPTS)
        )
    for m, r in zip(PROMPTS, ct2):
        hf = chat(clients["hf"], messages=m, max_tokens=12, logprobs=True, top_logprobs=4)
        a, b = r.choices[0], hf.choices[0]
        assert a.model_extra["token_ids"] == b.model_extra["token_ids"] and len(a.model_extra["token_ids"]) > 0
        assert (a.message.content, a.finish_reason) == (b.message.content, b.finish_reason)
        assert r.usage == hf.usage and len(a.logprobs.content) == r.usage.completion_tokens
        assert all(len(e.top_logprobs) == 4 for e in a.logprobs.content)
        assert_same_logprobs(a.logprobs.content, b.logprobs.content)
    assert r.system_fingerprint != hf.system_fingerprint  # the engine is part of the fingerprint


def test_stream_equals_the_completion(clients):
    c = clients["ct2"]
    full = chat(c, max_tokens=16, logprobs=True, top_logprobs=2).choices[0]
    text, finish, entries, chunks = streamed(c, max_tokens=16)
    assert (text, finish) == (full.message.content, full.finish_reason) and entries == []
    assert chunks > 1  # without logprobs the text streams as it is decoded
    text, finish, entries, _ = streamed(c, max_tokens=16, logprobs=True, top_logprobs=2)
    assert (text, finish) == (full.message.content, full.finish_reason)
    assert_same_logprobs(entries, full.logprobs.content)


def test_n_stop_string_and_max_tokens(clients):
    c = clients["ct2"]
    r = chat(c, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    full = chat(c, max_tokens=24).choices[0].message.content
    both = chat(c, max_tokens=24, n=2)
    assert [ch.index for ch in both.choices] == [0, 1] and {ch.message.content for ch in both.choices} == {full}
    stop = next(full[i : i + 2] for i in range(2, len(full) - 2) if "\ufffd" not in full[i : i + 2])
    want = full[: full.find(stop)]
    r = chat(c, max_tokens=24, stop=[stop, "never-appears"], logprobs=True)
    ch = r.choices[0]
    assert (ch.message.content, ch.finish_reason) == (want, "stop")
    assert len(ch.logprobs.content) == len(ch.model_extra["token_ids"]) < r.usage.completion_tokens < 24
    assert streamed(c, max_tokens=24, stop=stop)[:2] == (want, "stop")
    hf = chat(clients["hf"], max_tokens=24, stop=stop, logprobs=True)
    assert ch.model_extra["token_ids"] == hf.choices[0].model_extra["token_ids"] and r.usage == hf.usage


def test_seeded_sampling_is_reproducible(clients):
    c = clients["ct2"]
    kw = dict(temperature=1.0, top_p=0.9, max_tokens=12)
    a, b = (chat(c, seed=7, **kw).choices[0].message.content for _ in range(2))
    assert a == b and a != chat(c, max_tokens=12).choices[0].message.content  # sampled, and the same twice
    assert chat(c, seed=8, **kw).choices[0].message.content != a
    runs = [[ch.message.content for ch in chat(c, seed=3, n=3, **kw).choices] for _ in range(2)]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_rows_of_one_batch_match_generate_rows(clients, monkeypatch):
    """Prompts of different lengths and limits in one call: tokens, logprob entries and confidence steps
    as :func:`generate_rows`'; and CTranslate2 decodes no row past its end (limit or cancellation)."""
    from potstill.chat import encode_prompt
    from potstill.serve.ct2backend import generate_rows_ct2
    from potstill.serve.decode import Row, generate_rows

    ct2, hf = clients["ct2_backend"].gen, clients["hf_backend"].gen
    prompts = [encode_prompt(hf.tokenizer, m) for m in PROMPTS]

    def rows():
        return [
            Row(prompt=p, max_tokens=6 + 3 * i, confidence=True, logprobs=i > 0, k=3) for i, p in enumerate(prompts)
        ]

    class Spy:  # records what CTranslate2 decoded
        def __init__(self, model):
            self.model, self.results = model, []

        def generate_batch(self, *args, **kwargs):
            self.results += self.model.generate_batch(*args, **kwargs)
            return self.results

    spy = Spy(ct2.model)
    monkeypatch.setattr(ct2, "model", spy)
    a, b = rows(), rows()
    gone = Row(prompt=prompts[0], max_tokens=20, on_event=lambda ev: gone.cancelled.set())  # its client left
    generate_rows_ct2(ct2, [*a, gone])
    generate_rows(hf.model, hf.tokenizer, hf.eos_ids, b, hf.device)
    assert [len(res.sequences_ids[0]) for res in spy.results] == [len(r.tokens) for r in [*a, gone]]
    assert 0 < len(gone.tokens) < 5 and gone.cancelled.is_set()
    for ra, rb in zip(a, b):
        assert ra.token_ids() == rb.token_ids() and (ra.text, ra.finish) == (rb.text, rb.finish)
        assert len(ra.kept_steps()) == ra.kept > 0
        assert ra.finish == "stop" or len(ra.tokens) == ra.max_tokens
        assert len(ra.entries) == (ra.kept if ra.logprobs else 0)
        for (ta, la, topa), (tb, lb, topb) in zip(ra.entries, rb.entries):
            assert (ta, [t for t, _ in topa]) == (tb, [t for t, _ in topb])
            assert [la] + [v for _, v in topa] == pytest.approx([lb] + [v for _, v in topb], abs=1e-4)
        assert [x for s in ra.kept_steps() for x in s] == pytest.approx(
            [x for s in rb.kept_steps() for x in s], abs=1e-4
        )


def test_answer_with_confidence_on_ct2_matches_hf(tiny_teacher_dir):
    from potstill.route.answers import answer_with_confidence

    records = [{"id": f"r{i}", "messages": m} for i, m in enumerate(PROMPTS)]
    hf = answer_with_confidence(tiny_teacher_dir, records, 8, batch_size=2, engine="hf")
    ct2 = answer_with_confidence(tiny_teacher_dir, records, 8, batch_size=2, engine="ct2")
    for a, b in zip(ct2, hf):
        assert (a["id"], a["text"], a["finish_reason"]) == (b["id"], b["text"], b["finish_reason"])
        assert a["features"]["tokens"] > 0
        assert a["features"] == pytest.approx(b["features"], abs=1e-4)


@pytest.fixture(scope="module")
def gpt_neo_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny GPT-Neo: an architecture CTranslate2 has no converter for."""
    from ctranslate2.converters import transformers as converters
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    assert "GPTNeoConfig" not in converters._MODEL_LOADERS
    d = tmp_path_factory.mktemp("gpt_neo")
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    tok = AutoTokenizer.from_pretrained(str(d))
    cfg = GPTNeoConfig(
        vocab_size=len(tok), hidden_size=16, num_layers=2, num_heads=2, attention_types=[[["global"], 2]]
    )
    GPTNeoForCausalLM(cfg).save_pretrained(str(d))
    return d


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("potstill: error:")]


def test_cli_engine_errors_are_one_line(gpt_neo_dir, tiny_teacher_dir, tmp_path, capsys, monkeypatch):
    assert cli_main(["serve", str(gpt_neo_dir), "--engine", "ct2", "--port", "0"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "cannot convert a 'gpt_neo' model" in line and "engine hf" in line

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # not installed
    assert cli_main(["serve", str(tiny_teacher_dir), "--engine", "ct2-int8", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install ctranslate2" in err
    route = tmp_path / "route.json"
    route.write_text(json.dumps({"router": {"signal": "mean_logprob", "threshold": 0}}))
    gateway = ["serve", "--student", str(tiny_teacher_dir), "--fallback", str(tiny_teacher_dir), "--route", str(route)]
    assert cli_main([*gateway, "--engine", "ct2", "--port", "0"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "pip install ctranslate2" in line
