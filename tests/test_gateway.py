"""The routing gateway (``potstill serve --student --fallback --route``) with tiny local models and the
official ``openai`` client: who answers, streaming, the fallback log, a teacher outage, key, size limit,
concurrency, and the log as the next round's prompt source."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from potstill.cli.main import main as cli_main
from potstill.route.features import Router
from potstill.route.gateway import ApiTeacher, FallbackLog, LocalTeacher, RoutingBackend
from potstill.serve import HFBackend
from potstill.teachers.api import make_provider

KEY = "gw-key"
Q = [{"role": "user", "content": "What is two plus two?"}]
ALWAYS_STUDENT = {"signal": "mean_logprob", "threshold": -1e9}
ALWAYS_TEACHER = {"signal": "mean_logprob", "threshold": 1e9}


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def gateway(tiny_student_dir, tiny_teacher_dir, serve_model, tmp_path_factory):
    """Factory ``gateway(router_spec, teacher="local"|"down", **app_kw) -> (openai client, url, backend, log path)``."""
    made = []

    def make(spec, teacher="local", api_key=None, **app_kw):
        log = FallbackLog(tmp_path_factory.mktemp("gw") / "fallbacks.jsonl")
        student = HFBackend.from_dir(tiny_student_dir, model_name="student", batch_wait_ms=20)
        if teacher == "local":
            t = LocalTeacher(HFBackend.from_dir(tiny_teacher_dir, model_name="teacher"))
        else:  # an OpenAI-compatible teacher on a port nobody listens on
            t = ApiTeacher(make_provider("openai", "big-teacher", f"http://127.0.0.1:{closed_port()}/v1", None, 2.0, 4))
        backend = RoutingBackend(student, t, Router(spec), log, model_name="gw", teacher_timeout=5)
        url, _ = serve_model(backend=backend, api_key=api_key, **app_kw)
        client = openai.OpenAI(base_url=url + "/v1", api_key=api_key or "none", max_retries=0, timeout=60)
        made.append(backend)
        return client, url, backend, log.path

    return make


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def ask(client, **kw):
    kw.setdefault("messages", Q)
    return client.chat.completions.with_raw_response.create(model="gw", temperature=0, max_tokens=8, **kw)


def test_student_answers_above_the_threshold(gateway):
    client, _, backend, log = gateway(ALWAYS_STUDENT)
    raw = ask(client)
    r = raw.parse()
    assert r.model == "student" and raw.headers["x-potstill-model"] == "student"
    assert raw.headers["x-potstill-routed-to"] == "student"
    info = r.model_extra["potstill"]
    assert info["routed_to"] == "student" and info["teacher_error"] is None
    assert float(raw.headers["x-potstill-route-score"]) == pytest.approx(info["score"], rel=1e-5)
    assert info["score"] < 0  # mean log-probability of the answer
    assert lines(log) == [] and backend.counts["student"] == 1


def test_teacher_answers_below_the_threshold_and_is_logged(gateway, tiny_teacher_dir):
    client, _, backend, log = gateway(ALWAYS_TEACHER)
    raw = ask(client)
    r = raw.parse()
    assert r.model == "teacher" and raw.headers["x-potstill-routed-to"] == "teacher"
    direct = HFBackend.from_dir(tiny_teacher_dir, model_name="teacher")  # the teacher's own greedy answer
    from potstill.serve.schemas import ChatCompletionRequest

    want = asyncio.run(direct.complete(ChatCompletionRequest(messages=Q, temperature=0, max_tokens=8)))
    assert r.choices[0].message.content == want.choices[0].message.content
    (entry,) = lines(log)
    assert entry["messages"] == Q and entry["teacher"]["text"] == want.choices[0].message.content
    assert entry["student"]["model"] == "student" and isinstance(entry["student"]["text"], str)
    assert entry["score"] == pytest.approx(r.model_extra["potstill"]["score"]) and entry["teacher_error"] is None
    assert set(entry["features"]) >= {"mean_logprob", "p10", "mean_entropy"}

    # streaming through the official client: same answer, same routing, decided before the first chunk
    text, first = "", None
    for chunk in client.chat.completions.create(model="gw", messages=Q, temperature=0, max_tokens=8, stream=True):
        first = first or chunk
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == want.choices[0].message.content and first.model == "teacher"
    assert first.model_extra["potstill"]["routed_to"] == "teacher"
    assert len(lines(log)) == 2


def test_multi_turn_is_scored_on_the_whole_conversation(gateway):
    client, _, _, _ = gateway(ALWAYS_STUDENT)
    one = ask(client).parse().model_extra["potstill"]["score"]
    convo = [{"role": "user", "content": "Name a large animal."}, {"role": "assistant", "content": "An elephant."}, *Q]
    two = ask(client, messages=convo).parse().model_extra["potstill"]["score"]
    assert one != two  # the earlier turns condition every scored token


def test_teacher_outage_returns_the_student_flagged(gateway):
    client, _, backend, log = gateway(ALWAYS_TEACHER, teacher="down")
    raw = ask(client)
    r = raw.parse()
    info = r.model_extra["potstill"]
    assert raw.status_code == 200 and r.model == "student" and info["routed_to"] == "student"
    assert "connect" in info["teacher_error"].lower() and raw.headers["x-potstill-teacher-error"]
    (entry,) = lines(log)
    assert entry["teacher"]["text"] is None and entry["teacher_error"] == info["teacher_error"]
    assert backend.counts["teacher_errors"] == 1


def test_key_size_limit_and_n(gateway):
    client, url, _, _ = gateway(ALWAYS_STUDENT, api_key=KEY, max_body_bytes=4096)
    assert ask(client).status_code == 200
    r = httpx.post(url + "/v1/chat/completions", json={"messages": Q})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(url + "/v1/chat/completions", json=big, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="gw", messages=Q, n=2)


def test_64_concurrent_clients(gateway):
    client, url, backend, log = gateway({"signal": "mean_logprob", "threshold": -2.0})

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:

            async def one(i):
                body = {
                    "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
                    "max_tokens": 6,
                    "temperature": 0,
                    "stream": i % 4 == 0,
                }
                r = await c.post("/v1/chat/completions", json=body)
                return r.status_code, r.headers.get("x-potstill-routed-to"), r.text

            return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(run())
    assert [s for s, _, _ in results] == [200] * 64
    assert all(t.rstrip().endswith("data: [DONE]") for i, (_, _, t) in enumerate(results) if i % 4 == 0)
    routed = [w for _, w, _ in results]
    assert backend.counts["teacher"] == routed.count("teacher") == len(lines(log))
    assert backend.counts["student"] == routed.count("student") and backend.counts["requests"] >= 64


def test_fallback_log_is_the_next_rounds_prompt_source(tmp_path):
    from potstill.data.load import SourceSpec, read_source
    from potstill.route.gateway import fallback_record

    log = FallbackLog(tmp_path / "fallbacks.jsonl")
    convos = [[{"role": "user", "content": f"question number {i} about plans"}] for i in range(5)]
    for m in convos:
        log.append(fallback_record(m, "student", "s", 0.1, {"p10": 0.1}, 0.5, "teacher", "t", None))
    records, _ = read_source(SourceSpec(path=str(log.path)), tmp_path)
    assert [r["messages"] for r in records] == convos
    assert len({r["id"] for r in records}) == 5 and all(r["id"].startswith("fallback-") for r in records)

    # next round: the log beside the old prompts, train_only: none of it lands in validation
    from potstill.data import PromptsConfig, run_prompts
    from potstill.io import read_jsonl

    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"old prompt {i} about seats and trials"}) + "\n" for i in range(40))
    )
    cfg = PromptsConfig(
        sources=[{"path": "train.jsonl"}, {"path": "fallbacks.jsonl", "train_only": True}],
        validation=0.5,
        test_fraction=0.0,
        dedup=False,
    )
    run_prompts(cfg, tmp_path, tmp_path / "out")
    train = {r["id"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")}
    val = read_jsonl(tmp_path / "out" / "validation.jsonl")
    assert {r["id"] for r in records} <= train and val and not any(r["id"].startswith("fallback-") for r in val)


def test_cli_gateway_arguments(tmp_path, tiny_student_dir, capsys):
    assert cli_main(["serve", "--student", str(tiny_student_dir)]) == 2
    assert "--fallback" in capsys.readouterr().err
    bad = tmp_path / "route.json"
    bad.write_text('{"router": {"signal": "vibes", "threshold": 0}}')
    assert (
        cli_main(
            ["serve", "--student", str(tiny_student_dir), "--fallback", str(tiny_student_dir), "--route", str(bad)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "route.json" in err and "vibes" in err
    assert cli_main(["serve", str(tiny_student_dir), "--student", str(tiny_student_dir)]) == 2


def test_cli_gateway_serves(tmp_path, tiny_student_dir, tiny_teacher_dir):
    route = tmp_path / "route.json"
    route.write_text(json.dumps({"router": ALWAYS_TEACHER}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "serve",
            "--student",
            str(tiny_student_dir),
            "--fallback",
            str(tiny_teacher_dir),
            "--route",
            str(route),
            "--port",
            "0",
            "--name",
            "gw",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        for line in proc.stderr:
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        assert m
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{m.group(1)}/v1", api_key="none", max_retries=2, timeout=60)
        r = c.chat.completions.create(model="gw", messages=Q, max_tokens=4, temperature=0)
        assert r.model == tiny_teacher_dir.name
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    assert len(lines(tmp_path / "fallbacks.jsonl")) == 1  # default log: beside the route file


def test_abort_ends_teacher_waits_with_the_student_answer(tiny_student_dir, tmp_path):
    """Shutdown (``abort``) while the teacher is slow: the request gets the student's answer, flagged, at once."""
    from potstill.serve.schemas import ChatCompletionRequest

    class SlowTeacher:
        model_name = "slow"

        async def answer(self, req):
            await asyncio.sleep(60)

    log = FallbackLog(tmp_path / "fallbacks.jsonl")
    student = HFBackend.from_dir(tiny_student_dir, model_name="student", batch_wait_ms=1)
    gw = RoutingBackend(student, SlowTeacher(), Router(ALWAYS_TEACHER), log, teacher_timeout=60)

    async def go():
        task = asyncio.ensure_future(gw.complete(ChatCompletionRequest(messages=Q, temperature=0, max_tokens=4)))
        while not gw.asking:  # the student has answered; the teacher is being asked
            await asyncio.sleep(0.01)
        assert gw.abort() == 1
        return await asyncio.wait_for(task, 10)

    r = asyncio.run(go())
    assert r["model"] == "student" and r["potstill"]["teacher_error"] == "the server is shutting down"
    assert lines(log.path)[0]["teacher_error"] == "the server is shutting down"
