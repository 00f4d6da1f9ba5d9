"""``potstill serve``: the official ``openai`` client against a tiny local model over loopback."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from potstill.cli.main import main as cli_main
from potstill.serve import Batcher, HFBackend, create_app

KEY = "test-key"
BODY_LIMIT = 64 * 1024
Q = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def server(tiny_teacher_dir, serve_model):
    """The tiny teacher served by uvicorn in a background thread on a free port (API key required)."""
    url, backend = serve_model(
        tiny_teacher_dir, name="tiny", api_key=KEY, max_body_bytes=BODY_LIMIT, max_batch=16, batch_wait_ms=30
    )
    return {"url": url, "backend": backend, "dir": tiny_teacher_dir}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, **kw):
    kw.setdefault("messages", Q)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", **kw)


def streamed(client, **kw):
    """(text, finish_reason, logprob entries, usage) collected from a stream."""
    text, finish, entries, usage = "", None, [], None
    for c in chat(client, stream=True, **kw):
        usage = c.usage or usage
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
            if ch.logprobs and ch.logprobs.content:
                entries += ch.logprobs.content
    return text, finish, entries, usage


def test_chat_stream_and_top_logprobs(client):
    r = chat(client, max_tokens=16, logprobs=True, top_logprobs=5)
    ch = r.choices[0]
    assert r.model == "tiny" and r.id.startswith("chatcmpl-") and r.system_fingerprint.startswith("fp_")
    assert ch.message.role == "assistant" and ch.message.content and ch.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == len(ch.logprobs.content) and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    for e in ch.logprobs.content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert e.logprob >= tops[-1] - 1e-6 and e.logprob <= 0
        assert e.token_id == e.top_logprobs[0].token_id  # greedy picks the most likely token
        assert abs(math.log(sum(math.exp(t) for t in tops))) < 10
    assert [e.token_id for e in ch.logprobs.content] == ch.model_extra["token_ids"]
    # streaming: deltas add up to the same greedy answer, logprob entries included
    text, finish, entries, usage = streamed(
        client, max_tokens=16, logprobs=True, top_logprobs=5, stream_options={"include_usage": True}
    )
    assert (text, finish) == (ch.message.content, ch.finish_reason)
    assert [(e.token, e.logprob) for e in entries] == [(e.token, e.logprob) for e in ch.logprobs.content]
    assert usage.completion_tokens == r.usage.completion_tokens


def test_matches_local_generator(server, client):
    """Same greedy tokens and top logprobs as the generate stage's LocalGenerator."""
    from potstill.chat import encode_prompt
    from potstill.teachers.base import GenerationSettings

    gen = server["backend"].gen
    settings = GenerationSettings(max_new_tokens=10, top_logprobs=3)
    local = gen.generate_batch([encode_prompt(gen.tokenizer, Q)], settings)[0]
    r = chat(client, max_tokens=10, logprobs=True, top_logprobs=3).choices[0]
    assert r.model_extra["token_ids"] == local["token_ids"] and r.finish_reason == local["finish_reason"]
    for e, row in zip(r.logprobs.content, local["top_logprobs"]):
        assert [t.token_id for t in e.top_logprobs] == [t for t, _ in row]
        assert [t.logprob for t in e.top_logprobs] == pytest.approx([v for _, v in row], abs=1e-5)


def test_max_tokens_and_stop_strings(client):
    r = chat(client, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    full = chat(client, max_tokens=24).choices[0].message.content
    stop = next(full[i : i + 2] for i in range(2, len(full) - 2) if "\ufffd" not in full[i : i + 2])
    want = full[: full.find(stop)]
    for stops in (stop, [stop, "never-appears"]):
        r = chat(client, max_tokens=24, stop=stops)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want, "stop")
    assert streamed(client, max_tokens=24, stop=stop)[:2] == (want, "stop")


def test_concurrent_requests_are_batched_and_match_single(server, client):
    prompts = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}] for i in range(16)]
    singles = [chat(client, messages=p, max_tokens=8).choices[0].message.content for p in prompts[:3]]
    before = httpx.get(server["url"] + "/health").json()["stats"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: chat(client, messages=p, max_tokens=8 + len(p[0]["content"]) % 5), prompts))
    after = httpx.get(server["url"] + "/health").json()["stats"]
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    assert after["rows"] - before["rows"] == 16
    assert after["batches"] - before["batches"] < 16 and after["max_batch_rows"] > 1
    for single, a in zip(singles, answers):  # greedy: batched (longer limit) starts with the single answer
        assert a.choices[0].message.content.startswith(single)


def test_sampling_with_seed_is_reproducible(client):
    a, b = (
        chat(client, temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].message.content for _ in range(2)
    )
    assert a == b
    r = chat(client, temperature=1.0, seed=3, n=3, max_tokens=12)
    assert [c.index for c in r.choices] == [0, 1, 2]


def test_errors(server, client):
    url = server["url"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.post(url + "/v1/chat/completions", json={"messages": Q})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/health").json()["model"] == "tiny"  # no key needed
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=Q)
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, messages=[{"role": "user", "content": "x" * (BODY_LIMIT + 10)}])
    assert e.value.status_code == 413 and "too large" in e.value.message
    with pytest.raises(openai.BadRequestError):
        chat(client, temperature=3.0)
    with pytest.raises(openai.BadRequestError):
        chat(client, n=2, stream=True)
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = (b"y" * 1000 for _ in range(BODY_LIMIT // 1000 + 5))  # chunked, no content-length
    r = httpx.post(url + "/v1/chat/completions", content=big, headers=auth)
    assert r.status_code == 413
    assert httpx.get(url + "/nowhere").json()["error"]["message"]
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_backend_failure_is_500_and_stream_reports_error():
    class Broken:
        model_name = "b"

        async def complete(self, req):
            raise RuntimeError("boom")

        async def stream(self, req):
            yield {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "b",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            }
            raise RuntimeError("mid-stream")

    async def go():
        transport = httpx.ASGITransport(app=create_app(Broken()))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/v1/chat/completions", json={"messages": Q})
            assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
            r = await c.post("/v1/chat/completions", json={"messages": Q, "stream": True})
            assert r.status_code == 200 and r.headers["x-potstill-model"] == "b"
            assert '"error"' in r.text.splitlines()[-2] and "[DONE]" not in r.text

    asyncio.run(go())


def test_batcher_groups_by_key():
    seen = []
    b = Batcher(lambda items: seen.append(sorted(items)), max_batch=4, wait_ms=20, key=lambda x: x % 2)

    async def go():
        await asyncio.gather(*(b.submit(i) for i in range(6)))
        await b.aclose()

    asyncio.run(go())
    assert sorted(sum(seen, [])) == list(range(6)) and all(len({x % 2 for x in g}) == 1 for g in seen)
    assert b.stats()["rows"] == 6 and b.stats()["batches"] == len(seen) < 6


def test_batches_fit_the_context():
    from potstill.serve.backend import fit_context
    from potstill.serve.decode import Row

    rows = [
        Row(prompt=[1] * 400, max_tokens=100),
        Row(prompt=[1] * 10, max_tokens=500),
        Row(prompt=[1] * 20, max_tokens=50),
    ]
    groups = fit_context(rows, 512)
    assert all(max(len(r.prompt) for r in g) + max(r.max_tokens for r in g) <= 512 for g in groups)
    assert sorted(len(r.prompt) for g in groups for r in g) == [10, 20, 400] and len(groups) == 2
    assert fit_context(rows, None) == [rows]


def test_cli_bad_model_dir(tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli_main(["serve", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_cli_bad_grace(tiny_student_dir, capsys):
    assert cli_main(["serve", str(tiny_student_dir), "--grace-s", "-1"]) == 2
    assert "--grace-s" in capsys.readouterr().err


def test_cli_serves_until_interrupted(tiny_student_dir):
    env = {**os.environ, "SERVE_TEST_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "serve",
            str(tiny_student_dir),
            "--port",
            "0",
            "--name",
            "student",
            "--api-key-env",
            "SERVE_TEST_KEY",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        assert m, "".join(lines)
        url = f"http://127.0.0.1:{m.group(1)}"
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=2, timeout=60)
        r = c.chat.completions.create(model="student", messages=Q, max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length") and r.model == "student"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0


def post(url, body, **kw):
    """A raw chat request with the test key (for bodies the openai client would not send)."""
    kw.setdefault("timeout", 60)
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, **kw)


def test_unknown_roles_are_400(server, client):
    for role in ("wizard", "tool", "function", "", None, 3):
        r = post(server["url"], {"messages": [{"role": role, "content": "hi"}], "max_tokens": 2})
        err = r.json()["error"]
        assert r.status_code == 400, (role, r.text)
        assert (err["type"], err["param"], err["code"]) == (
            "invalid_request_error",
            "messages[0].role",
            "invalid_value",
        )
        assert ("tool calling" if role in ("tool", "function") else "Supported values are") in err["message"]
    bad_part = post(server["url"], {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert bad_part.status_code == 400 and "only text content parts" in bad_part.json()["error"]["message"]
    # developer (the newer name of system) and text parts are fine
    r = chat(
        client,
        max_tokens=2,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_max_tokens_beyond_the_context_is_400(server, client):
    from potstill.serve.schemas import ChatCompletionRequest

    backend, context = server["backend"], server["backend"].context
    p = chat(client, max_tokens=1).usage.prompt_tokens
    for kw in (
        {"max_tokens": 10**9},
        {"max_tokens": context - p + 1},
        {"max_completion_tokens": 10**9},
        {"max_tokens": 10**9, "stream": True},
    ):
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, **kw)
        assert e.value.code == "context_length_exceeded" and e.value.param == next(iter(kw))
        assert f"maximum context length is {context} tokens" in e.value.message
    # an exact fit is accepted; the server's default limit is cut to what the context leaves
    req = ChatCompletionRequest(messages=Q, max_tokens=context - p)
    assert backend._rows(req, 1)[0].max_tokens == context - p
    roomy = HFBackend(backend.gen, "roomy", default_max_tokens=10**6, fingerprint="fp_x")
    assert roomy._rows(req.model_copy(update={"max_tokens": None}), 1)[0].max_tokens == context - p


def test_malformed_bodies_are_400_not_500(server):
    auth = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    bodies = [
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
        b'{"model": "\\udc00x", "messages": [{"role": "user", "content": "hi"}]}',
        b"[" * 20_000 + b"]" * 20_000,  # too deep for the JSON parser
        b'{"max_tokens": 1' + b"0" * 5000 + b"}",  # more digits than Python parses
        b'{"seed": 18446744073709551616, "messages": [{"role": "user", "content": "hi"}]}',
    ]
    for body in bodies:
        r = httpx.post(server["url"] + "/v1/chat/completions", content=body, headers=auth, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (body[:40], r.text)


def test_extreme_temperature_and_top_p_still_sample():
    """Found by the schema fuzzer: a top_p or temperature that rounds to 0 in float32 gave NaN probabilities (500)."""
    import torch

    from potstill.serve.decode import sample

    logits, g = torch.tensor([0.5, 3.0, -1.0, 2.9]), torch.Generator().manual_seed(0)
    assert [sample(logits, t, p, g) for t, p in ((5e-324, 1.0), (1.0, 5e-324), (1e-30, 1e-30))] == [1, 1, 1]


def test_batcher_drops_cancelled_items_and_aborts():
    started, release = threading.Event(), threading.Event()
    ran, cancelled = [], []

    def run(items):
        ran.append(list(items))
        started.set()
        release.wait(10)

    b = Batcher(run, max_batch=1, wait_ms=0, cancel=cancelled.append)

    async def go():
        first = asyncio.ensure_future(b.submit("a"))
        await asyncio.to_thread(started.wait, 10)
        second, third = asyncio.ensure_future(b.submit("b")), asyncio.ensure_future(b.submit("c"))
        await asyncio.sleep(0.01)
        assert (b.stats()["running"], b.stats()["waiting"]) == (1, 2)
        first.cancel()
        second.cancel()
        await asyncio.sleep(0.01)
        assert sorted(cancelled) == ["a", "b"] and (b.stats()["running"], b.stats()["waiting"]) == (0, 1)
        release.set()
        await third
        assert ran == [["a"], ["c"]]  # b never ran
        started.clear()
        release.clear()
        running = asyncio.ensure_future(b.submit("d"))
        await asyncio.to_thread(started.wait, 10)
        waiting = asyncio.ensure_future(b.submit("e"))
        await asyncio.sleep(0.01)
        assert b.abort(RuntimeError("stopping")) == 2 and cancelled[-2:] == ["d", "e"]
        for t in (running, waiting, asyncio.ensure_future(b.submit("f"))):
            with pytest.raises(RuntimeError, match="stopping"):
                await t
        release.set()
        await b.aclose()
        await b.submit("g")  # a closed batcher starts afresh

    asyncio.run(go())


def test_clients_that_give_up_free_their_batch_slots(tmp_path, make_tiny_llama, serve_model):
    """Clients that time out (or hang up on a stream) stop their generations: /health soon shows nothing
    waiting or running, and the next request is answered at once rather than after their ~15000 tokens."""
    model = make_tiny_llama(tmp_path / "long", hidden=16, max_positions=4096, seed=1)
    url, _ = serve_model(model, name="s", max_batch=2, batch_wait_ms=5)

    def body(i, **kw):
        return {"messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 3000, "temperature": 0, **kw}

    def give_up(i):
        try:
            r = httpx.post(url + "/v1/chat/completions", json=body(i), timeout=0.5)
        except httpx.TimeoutException:
            return
        raise AssertionError(f"answered within the timeout: {r.status_code} {r.text[:300]}")

    def hang_up_stream(i):
        with httpx.stream("POST", url + "/v1/chat/completions", json=body(i, stream=True), timeout=30) as r:
            assert next(r.iter_lines()).startswith("data: {")  # the role chunk; then the client leaves

    with ThreadPoolExecutor(5) as pool:
        for f in [pool.submit(give_up, i) for i in range(4)] + [pool.submit(hang_up_stream, 4)]:
            f.result()
    deadline = time.monotonic() + 5
    while True:
        stats = httpx.get(url + "/health", timeout=10).json()["stats"]
        if stats["waiting"] == stats.get("running", 0) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (stats["waiting"], stats.get("running")) == (0, 0), stats
    r = httpx.post(url + "/v1/chat/completions", json={"messages": Q, "max_tokens": 4, "temperature": 0}, timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_sigterm_drains_then_exits_cleanly(tmp_path, make_tiny_llama):
    """SIGTERM with requests in flight: the server waits for them for the grace (default 5 s): a short
    stream finishes, a long generation is then answered 503; the process exits 0 with no traceback."""
    model = make_tiny_llama(tmp_path / "long", hidden=16, max_positions=8192, seed=1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "serve",
            str(model),
            "--port",
            "0",
            "--name",
            "m",
            "--batch-wait-ms",
            "500",
            "--engine",
            "hf",  # a long generation that outlasts the grace (CTranslate2 would finish 8,000 tokens first)
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    results, threads, lines = {}, [], []
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        assert m, "".join(lines)
        url = f"http://127.0.0.1:{m.group(1)}"
        warm = httpx.post(url + "/v1/chat/completions", json={"messages": Q, "max_tokens": 2}, timeout=60)
        assert warm.status_code == 200  # the first generate call of a process is slow
        first_chunk = threading.Event()

        def stream():
            finish = None
            with httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                timeout=60,
                json={"messages": Q, "max_tokens": 8, "temperature": 0, "stream": True},
            ) as r:
                for line in r.iter_lines():
                    first_chunk.set()
                    event = json.loads(line[6:]) if line.startswith("data: {") else {}
                    if event.get("choices") or event.get("error"):
                        finish = event["choices"][0]["finish_reason"] if event.get("choices") else event["error"]
            results["stream"] = (r.status_code, finish)

        def long():
            r = httpx.post(
                url + "/v1/chat/completions", timeout=60, json={"messages": Q, "max_tokens": 8000, "temperature": 0}
            )
            results["long"] = (
                r.status_code,
                r.json()["error"]["code"] if r.status_code != 200 else None,
                time.monotonic(),
            )

        threads.append(threading.Thread(target=stream))
        threads[0].start()
        assert first_chunk.wait(30)
        threads.append(threading.Thread(target=long))  # joins the stream's batch (500 ms wait) or the next
        threads[1].start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the long generation is decoding
            stats = httpx.get(url + "/health", timeout=10).json()["stats"]
            if stats["requests"] == 3 and stats["waiting"] == 0 and stats.get("running", 0) >= 1:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for t in threads:
            t.join(60)
        err = "".join(lines) + proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
    assert results["stream"] == (200, "length"), results
    assert results["long"][:2] == (503, "server_shutting_down") and results["long"][2] - sent > 4, (results, sent)
    assert re.search(
        r"serve: stopped \(SIGTERM; \d request\(s\) in flight; 1 generation\(s\) cut off after the "
        r"5 s grace \(answered 503\)\)",
        err,
    ), err
