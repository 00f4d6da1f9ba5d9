"""API teachers over loopback HTTP: faults, exactly-once under SIGKILL, budget, rate limits, errors.

The servers are :mod:`faultserver` (a fault-injecting OpenAI/Anthropic-compatible server of our
own, in a thread) and, when it exists, ``potstill serve`` with a tiny local model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from faultserver import FaultServer, expected_text
from potstill.cli.main import main
from potstill.config import TeacherConfig
from potstill.teachers.apistage import run_api_generate
from potstill.teachers.cache import AnswerCache
from potstill.teachers.ratelimit import TokenBucket, backoff_delay, parse_retry_after

ROOT = Path(__file__).resolve().parents[1]


def write_prompts(path: Path, n: int, dup: int = 0) -> list[dict]:
    rows = [{"id": f"q{i}", "prompt": f"question {i} about item {i * 7 % 13}"} for i in range(n)]
    rows += [{"id": f"dup{i}", "prompt": rows[i]["prompt"]} for i in range(dup)]  # same messages, other ids
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*args: str) -> int:
    return main(["generate", *args])


def gen_args(server: FaultServer, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--teacher",
        "openai:test-model",
        "--base-url",
        server.base_url,
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        *extra,
    ]


def check_exactly_once(server: FaultServer, rows: list[dict], out: Path, max_tokens: int = 64) -> None:
    """Every prompt answered once, right; the cache holds only answers; nothing asked after it was cached."""
    gens = read_jsonl(out / "generations.jsonl")
    assert [g["id"] for g in gens] == [r["id"] for r in rows]
    for g, r in zip(gens, rows):
        assert (g["text"], g["finish_reason"]) == expected_text(r["prompt"], max_tokens)
        assert g["usage"]["completion_tokens"] == len(g["text"].split()) and g["attempts"] >= 1
    assert read_jsonl(out / "failed.jsonl") == []
    db = sqlite3.connect(out / "cache.sqlite")
    cached = {json.loads(res)["text"]: created for res, created in db.execute("SELECT result, created FROM answers")}
    assert len(cached) == len({r["prompt"] for r in rows})
    for r in rows:
        text = expected_text(r["prompt"], max_tokens)[0]
        assert text in cached  # only good answers are cached
        late = [e for e in server.log if e["prompt"] == r["prompt"] and e["t"] > cached[text]]
        assert late == [], f"{r['id']} asked again after its answer was cached"


# -- the engine under faults ------------------------------------------------------------------


def test_faults_every_prompt_answered_exactly_once(tmp_path, capsys):
    rows = write_prompts(tmp_path / "p.jsonl", 200, dup=10)
    with FaultServer(fail_rate=0.3, slow_s=3.0, retry_after="1", seed=1) as srv:
        rc = cli(
            *gen_args(
                srv,
                tmp_path / "p.jsonl",
                tmp_path / "out",
                "--concurrency",
                "32",
                "--timeout",
                "1.5",
                "--backoff-base",
                "0.05",
                "--max-attempts",
                "12",
                "--price-in",
                "1",
                "--price-out",
                "2",
            )
        )
        assert rc == 0
        check_exactly_once(srv, rows, tmp_path / "out")
        seen = Counter(srv.outcomes())
        assert all(seen[k] > 0 for k in ("429", "500", "slow", "malformed", "drop")), seen
        ok: dict[str, list[float]] = {}
        for e in srv.log:
            if e["outcome"] == "ok":
                ok.setdefault(e["prompt"], []).append(e["t"])
        assert all(r["prompt"] in ok for r in rows)
        # dup ids share one request: a prompt is asked again only after the client gave up on an answer
        # (on a loaded machine an "ok" the server sent can arrive after the 1.5 s client timeout)
        again = [sorted(ts) for ts in ok.values() if len(ts) > 1]
        assert all(b - a >= 1.4 for ts in again for a, b in zip(ts, ts[1:])), "a prompt was asked twice at once"
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["answered"] == 210 and stats["failed"] == 0 and stats["retries"] > 0
    assert stats["cost_usd"] == pytest.approx(
        (stats["prompt_tokens"] * 1 + stats["completion_tokens"] * 2) / 1e6, rel=0.1
    )
    err = capsys.readouterr().err
    assert "retries=" in err and "cost=$" in err and "estimated cost" in err

    # a rerun is answered from the cache: not one request
    with FaultServer() as srv2:
        assert cli(*gen_args(srv2, tmp_path / "p.jsonl", tmp_path / "out")) == 0
        assert srv2.log == []


def cached_count(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_twice_then_resume(tmp_path):
    rows = write_prompts(tmp_path / "p.jsonl", 200)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with FaultServer(fail_rate=0.3, slow_s=2.0, latency=0.05, retry_after="1", seed=2) as srv:
        cmd = [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "generate",
            *gen_args(
                srv,
                tmp_path / "p.jsonl",
                out,
                "--concurrency",
                "8",
                "--timeout",
                "1",
                "--backoff-base",
                "0.05",
                "--max-attempts",
                "12",
            ),
        ]
        kills = 0
        for threshold in (50, 120, None):
            proc = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
            if threshold is None:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err.decode()[-2000:]
                break
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if cached_count(out / "cache.sqlite") >= threshold:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "finished before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        assert kills == 2
        check_exactly_once(srv, rows, out)
    assert "already cached" in err.decode()


# -- budget, dead letters, retry-after, rate limits ---------------------------------------------


def api_config(srv: FaultServer, **kw) -> TeacherConfig:
    base = dict(
        model="openai:test-model",
        base_url=srv.base_url,
        concurrency=8,
        timeout_s=2,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
        max_new_tokens=64,
    )
    return TeacherConfig(**{**base, **kw})


def records(n: int) -> list[dict]:
    return [{"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i} is here"}]} for i in range(n)]


def test_budget_stop_then_rerun_continues(tmp_path, capsys):
    rows = write_prompts(tmp_path / "p.jsonl", 60)
    out = tmp_path / "out"
    # 1 token = $0.001: each answer costs ~5 in + 6 out = ~$0.011; 0.25 buys ~20 of them
    with FaultServer() as srv:
        prices = ["--price-in", "1000", "--price-out", "1000"]
        rc = cli(*gen_args(srv, tmp_path / "p.jsonl", out, "--concurrency", "4", "--max-cost", "0.25", *prices))
        assert rc == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert "max_cost $0.25 reached" in err[-1]
        stats = json.loads((out / "stats.json").read_text())
        assert stats["stopped"] == "max_cost" and 10 <= stats["answered"] < 60 and stats["cost_usd"] <= 0.25
        assert stats["unanswered"] == 60 - stats["answered"] and read_jsonl(out / "failed.jsonl") == []
        assert len(read_jsonl(out / "generations.jsonl")) == stats["answered"]
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", out, "--max-cost", "10", *prices)) == 0
        check_exactly_once(srv, rows, out)
    assert cli(*gen_args(srv, tmp_path / "p.jsonl", out, "--max-cost", "1")) == 2  # a budget needs prices
    assert "max_cost needs the teacher's token prices" in capsys.readouterr().err


def test_dead_letters_are_not_cached_and_rerun_retries_only_them(tmp_path):
    recs = records(20)
    bad = recs[3]["messages"][0]["content"]
    with FaultServer(always_fail={bad}) as srv:
        cfg = api_config(srv, max_attempts=3)
        stats = run_api_generate(cfg, recs, tmp_path, cache_path=tmp_path / "c.sqlite")
        assert stats["answered"] == 19 and stats["failed"] == 1
        (dead,) = read_jsonl(tmp_path / "failed.jsonl")
        assert dead["id"] == "q3" and dead["attempts"] == 3 and dead["kind"] == "server" and "HTTP 5" in dead["error"]
        assert len(AnswerCache(tmp_path / "c.sqlite")) == 19
        srv.always_fail.clear()
        n_before = len(srv.log)
        stats = run_api_generate(cfg, recs, tmp_path, cache_path=tmp_path / "c.sqlite")
        assert stats["answered"] == 20 and stats["failed"] == 0 and stats["cached_before"] == 19
        assert [e["prompt"] for e in srv.log[n_before:]] == ["ping", bad]  # preflight + the dead letter only


def test_endpoint_going_away_stops_the_run_in_one_line(tmp_path, capsys):
    rows = write_prompts(tmp_path / "p.jsonl", 120)
    with FaultServer(always_fail={r["prompt"] for r in rows[20:]}) as srv:
        args = gen_args(
            srv,
            tmp_path / "p.jsonl",
            tmp_path / "o",
            "--concurrency",
            "1",
            "--backoff-base",
            "0.001",
            "--backoff-max",
            "0.002",
            "--max-attempts",
            "100",
        )
        assert cli(*args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "stopped answering: 50 requests in a row failed, the last with: HTTP 50" in err[-1]
        assert len(srv.log) == 1 + 20 + 50 and len(AnswerCache(tmp_path / "o" / "cache.sqlite")) == 20


def test_retry_after_is_honored(tmp_path):
    with FaultServer(fail_rate=1.0, faults=("429",), retry_after="1") as srv:
        from potstill.teachers.api import make_provider
        from potstill.teachers.engine import Engine, EngineSettings, Job

        async def go():
            p = make_provider("openai", "test-model", srv.base_url, None, 5, 2)
            try:
                s = EngineSettings(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)
                params = {"max_tokens": 8, "top_logprobs": 0}
                return await Engine(p, AnswerCache(tmp_path / "c.sqlite"), s, params).run(
                    [Job("k", [{"role": "user", "content": "hi"}], 3)]
                )
            finally:
                await p.aclose()

        result = asyncio.run(go())
        assert result.failed["k"]["kind"] == "rate_limit" and result.failed["k"]["attempts"] == 2
        t = [e["t"] for e in srv.log]
        assert len(t) == 2 and t[1] - t[0] >= 0.95


def test_rate_limit_requests_per_minute(tmp_path):
    with FaultServer() as srv:
        start = time.perf_counter()
        stats = run_api_generate(
            api_config(srv, concurrency=32, rpm=3000), records(99), tmp_path, cache_path=tmp_path / "c.sqlite"
        )
        # 50/s with a one-second burst of 50: the 100 requests (preflight included) need >= 1 s
        assert time.perf_counter() - start >= 0.95
        # every prompt reached the server; on a loaded machine a request can time out (2 s) after the
        # server logged it and be asked again, never without a retry counted
        assert len({e["prompt"] for e in srv.log}) == 100
        assert 100 <= len(srv.log) <= 100 + stats["retries"]


def test_token_bucket_and_retry_timing():
    now = [0.0]
    b = TokenBucket(600, clock=lambda: now[0])  # 10/s, capacity 10
    assert b.capacity == 10 and b.level == 10
    b.charge(25)  # real usage above the estimate: debt
    assert b.level == -15
    now[0] += 2.0
    b._refill()
    assert b.level == pytest.approx(5)
    b.charge(-100)  # refunds never exceed the capacity
    assert b.level == 10
    assert parse_retry_after({"retry-after": "2"}) == 2 and parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None
    delays = [backoff_delay(a, 1.0, 8.0) for a in (1, 2, 3, 4, 5, 6)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(4 <= d <= 8 for d in delays[3:])


# -- one clear line, exit code 2 --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_one_line_exit_2(tmp_path):
    write_prompts(tmp_path / "p.jsonl", 3)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "generate",
            "--teacher",
            "openai:m",
            "--base-url",
            f"http://127.0.0.1:{free_port()}/v1",
            "--prompts",
            "p.jsonl",
            "--out",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("potstill: error: cannot reach the teacher API at http://127.0.0.1:")


def test_bad_key_and_bad_model_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    write_prompts(tmp_path / "p.jsonl", 3)
    monkeypatch.setenv("TEST_KEY", "wrong")
    with FaultServer(api_key="secret") as srv:
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", tmp_path / "o", "--api-key-env", "TEST_KEY")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and "rejected the API key (HTTP 401: Incorrect API key provided); check $TEST_KEY" in err[0]
        )
        monkeypatch.setenv("TEST_KEY", "secret")
        args = gen_args(srv, tmp_path / "p.jsonl", tmp_path / "o", "--api-key-env", "TEST_KEY")
        args[1] = "openai:nope"
        assert cli(*args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "model 'nope' not found at" in err[0] and "does not exist" in err[0]
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", tmp_path / "o", "--api-key-env", "TEST_KEY")) == 0
        monkeypatch.delenv("TEST_KEY")
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", tmp_path / "o2", "--api-key-env", "TEST_KEY")) == 2
        assert "set the environment variable TEST_KEY" in capsys.readouterr().err
    assert cli("--teacher", "openai:m", "--prompts", "p.jsonl", "--out", "o", "--concurrency", "0") == 2
    assert "--concurrency: Input should be greater than or equal to 1" in capsys.readouterr().err


# -- anthropic, soft labels, the config form, potstill serve -----------------------------------


def test_anthropic_messages_api(tmp_path, capsys):
    recs = records(30)
    recs[0]["messages"].insert(0, {"role": "system", "content": "be brief"})
    with FaultServer(fail_rate=0.2, faults=("429", "500", "drop", "malformed"), retry_after="0") as srv:
        cfg = TeacherConfig(
            model="anthropic:test-model",
            base_url=srv.root,
            top_logprobs=3,
            backoff_base_s=0.05,
            max_attempts=10,
            max_new_tokens=3,
        )
        stats = run_api_generate(cfg, recs, tmp_path, cache_path=tmp_path / "c.sqlite")
        assert {e["api"] for e in srv.log} == {"anthropic"}
    gens = read_jsonl(tmp_path / "generations.jsonl")
    assert stats["answered"] == 30 and stats["finish_length"] == 30
    assert gens[1]["text"] == "echo question 1" and gens[1]["finish_reason"] == "length"
    assert gens[1]["top_logprobs"] is None and "top_logprobs_text" not in gens[1]
    assert "Anthropic Messages API returns no log-probabilities" in capsys.readouterr().err


def test_top_logprobs_as_text_without_tokenizer(tmp_path):
    with FaultServer() as srv:
        run_api_generate(api_config(srv, top_logprobs=3), records(2), tmp_path, cache_path=tmp_path / "c.sqlite")
    g = read_jsonl(tmp_path / "generations.jsonl")[0]
    assert g["top_logprobs"] is None and len(g["top_logprobs_text"]) == len(g["text"].split())
    assert g["top_logprobs_text"][1] == [[" question", -0.05], [" alt1", -4.0], [" alt2", -5.0]]


def test_token_mapper_maps_api_tokens_to_ids(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from potstill.teachers.softlabels import TokenMapper, byte_decoder

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    ids = tok("What is the capital of France? Paris, élan.", add_special_tokens=False).input_ids
    dec = byte_decoder()

    def entry(i):
        raw = list(bytes(dec[c] for c in tok.convert_ids_to_tokens(i)))
        return [tok.decode([i]), -0.1, raw]

    api_lp = [[*entry(i), [[*entry(i), None], [*entry(ids[0]), None]], None] for i in ids]
    mapper = TokenMapper(tok)
    got_ids, rows = mapper.map(api_lp, "stop")
    assert got_ids == ids + [tok.eos_token_id] and rows[-1] == [[tok.eos_token_id, 0.0]]
    assert all(r[0][0] == i for r, i in zip(rows, ids))
    assert mapper.token_id("token_id:7") == 7 and mapper.token_id("\x00never-a-token\x01") is None


def test_config_form_generate_stage(tmp_path, capsys):
    from potstill import api

    write_prompts(tmp_path / "train.jsonl", 20)
    with FaultServer(fail_rate=0.2, faults=("500", "drop"), seed=3) as srv:
        cfg = {
            "run_dir": "run",
            "prompts": {"sources": [{"path": "train.jsonl"}], "test_fraction": 0.0, "validation": 0.0},
            "teacher": {
                "model": "openai:test-model",
                "base_url": srv.base_url,
                "concurrency": 4,
                "backoff_base_s": 0.05,
                "max_attempts": 10,
                "max_new_tokens": 5,
            },
            "student": {"model": "unused"},
        }
        import yaml

        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        api.prompts(str(tmp_path / "c.yaml"))
        assert main(["generate", str(tmp_path / "c.yaml")]) == 0
        gens = read_jsonl(tmp_path / "run" / "generate" / "generations.jsonl")
        assert len(gens) == 20 and (tmp_path / "run" / ".cache" / "teacher-api.sqlite").is_file()
        n = len(srv.log)
        # how answers are fetched is not part of the stage's inputs: still up to date
        assert main(["generate", str(tmp_path / "c.yaml"), "teacher.concurrency=16", "teacher.rpm=600"]) == 0
        assert "up to date, skipped" in capsys.readouterr().err
        # forced: everything comes from the cache
        assert main(["generate", str(tmp_path / "c.yaml"), "--force", "generate"]) == 0
        assert len(srv.log) == n


def test_potstill_serve_as_teacher(tmp_path, tiny_teacher_dir):
    pytest.importorskip("potstill.serve")
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "serve",
            str(tiny_teacher_dir),
            "--port",
            str(port),
            "--name",
            "teacher",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
        recs = records(6)
        cfg = TeacherConfig(
            model="openai:teacher",
            base_url=base,
            top_logprobs=3,
            max_new_tokens=6,
            tokenizer=str(tiny_teacher_dir),
            concurrency=4,
        )
        stats = run_api_generate(cfg, recs, tmp_path, cache_path=tmp_path / "c.sqlite")
        assert stats["answered"] == 6 and stats["failed"] == 0
        gens = read_jsonl(tmp_path / "generations.jsonl")
        direct = httpx.post(
            f"{base}/chat/completions",
            timeout=60,
            json={"model": "teacher", "messages": recs[0]["messages"], "max_tokens": 6, "temperature": 0, "seed": 0},
        ).json()
        assert gens[0]["text"] == direct["choices"][0]["message"]["content"]
        mapped = [g for g in gens if g["top_logprobs"] is not None]
        assert mapped, "no answer's log-probs mapped to token ids"
        for g in mapped:
            assert len(g["top_logprobs"]) == len(g["token_ids"]) and all(len(r) <= 3 for r in g["top_logprobs"])
        server_ids = direct["choices"][0].get("token_ids")
        if server_ids is not None and gens[0]["token_ids"] is not None:
            assert gens[0]["token_ids"][: len(server_ids)] == server_ids
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# -- failed prompts: exit code 3, teacher.max_failed_share (issue #13) ----------------------------


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("potstill: error:")]


def failing_run(tmp_path: Path, srv: FaultServer, **teacher) -> str:
    """A config whose 20 prompts all go to train; returns its path."""
    import yaml

    cfg = {
        "run_dir": "run",
        "prompts": {"sources": [{"path": "train.jsonl"}], "test_fraction": 0.0, "validation": 0.0},
        "teacher": {
            "model": "openai:test-model",
            "base_url": srv.base_url,
            "max_attempts": 2,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.02,
            "max_new_tokens": 5,
            **teacher,
        },
        "student": {"model": "unused"},
        "train": {"methods": ["sft"]},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "c.yaml")


def test_failed_prompts_within_share_exit_3_then_forced_rerun_retries_them(tmp_path, capsys):
    from potstill import api

    rows = write_prompts(tmp_path / "train.jsonl", 20)
    bad = rows[3]["prompt"]
    with FaultServer(always_fail={bad}) as srv:
        config = failing_run(tmp_path, srv, max_failed_share=0.1)
        api.prompts(config)
        capsys.readouterr()
        assert main(["generate", config]) == 3
        (line,) = error_lines(capsys)
        assert "generate finished, 1 of 20 prompts failed" in line and "--force generate" in line
        stage = tmp_path / "run" / "generate"
        assert str(stage / "failed.jsonl") in line
        assert [r["id"] for r in read_jsonl(stage / "failed.jsonl")] == ["q3"]
        assert json.loads((stage / "stats.json").read_text())["failed"] == 1
        assert json.loads((stage / "_provenance.json").read_text())["outputs"]["failed"] == 1
        assert main(["generate", config]) == 3  # up to date: still says so
        srv.always_fail.clear()
        n = len(srv.log)
        assert main(["generate", config, "--force", "generate"]) == 0
        assert [e["prompt"] for e in srv.log[n:]] == ["ping", bad]  # answered prompts come from the cache
        assert read_jsonl(stage / "failed.jsonl") == [] and len(read_jsonl(stage / "generations.jsonl")) == 20


def test_failed_prompts_over_share_stop_and_keep_nothing_trusted(tmp_path, capsys, tiny_student_dir):
    from potstill import api

    rows = write_prompts(tmp_path / "train.jsonl", 20)
    bad = rows[3]["prompt"]
    with FaultServer(always_fail={bad}) as srv:
        config = failing_run(tmp_path, srv)  # default teacher.max_failed_share 0.01: 0 of 20 may fail
        api.prompts(config)
        capsys.readouterr()
        for cmd in (["generate", config], ["run", config, f"student.model={tiny_student_dir}"]):
            assert main(cmd) == 2
            (line,) = error_lines(capsys)
            assert "1 of 20 prompts failed after retries, over teacher.max_failed_share 0.01" in line
            assert not (tmp_path / "run" / "generate").exists() and not (tmp_path / "run" / "students").exists()
            (kept,) = (tmp_path / "run" / ".work" / "generate").glob("*/failed.jsonl")
            assert str(kept) in line and [r["id"] for r in read_jsonl(kept)] == ["q3"]
        srv.always_fail.clear()
        n = len(srv.log)
        assert main(["generate", config]) == 0  # a plain rerun retries: the stage was never written
        assert [e["prompt"] for e in srv.log[n:]] == ["ping", bad]
        assert not kept.exists()


def test_direct_form_failed_prompts_exit_3(tmp_path, capsys):
    rows = write_prompts(tmp_path / "p.jsonl", 20)
    out = tmp_path / "out"
    with FaultServer(always_fail={rows[5]["prompt"]}) as srv:
        fast = ["--max-attempts", "2", "--backoff-base", "0.01", "--backoff-max", "0.02"]
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", out, *fast, "--max-failed-share", "0.1")) == 3
        (line,) = error_lines(capsys)
        assert "generate finished, 1 of 20 prompts failed" in line and str(out / "failed.jsonl") in line
        assert "rerun the same command" in line
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", out, *fast)) == 2
        assert "over teacher.max_failed_share 0.01" in error_lines(capsys)[0]
        srv.always_fail.clear()
        assert cli(*gen_args(srv, tmp_path / "p.jsonl", out, *fast)) == 0
    check_exactly_once(srv, rows, out)
