"""Acceptance run: 2,000 prompts against a server failing ~30% of requests, SIGKILLed twice, resumed.

The server is ``tests/faultserver.py`` (in this process, so every request is logged): 30% of
requests get a 429 with ``Retry-After: 1``, a 500/503, a response slower than the client's
timeout, malformed JSON, or a dropped connection. The client is the real CLI,
``python -m potstill.cli.main generate --teacher openai:test-model ...``, started in its own
process group and killed with SIGKILL once ``--kill-at`` answers are cached (twice by default),
then restarted until it finishes.

Checked at the end: ``generations.jsonl`` has every prompt id exactly once, in order, with the
right answer; ``failed.jsonl`` is empty; the cache holds exactly one good answer per prompt
(no failure); no prompt was requested after its answer was cached (nothing paid twice).

Last line of output: one JSON object (``exactly_once`` and ``ok`` are the verdicts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faultserver import FaultServer, expected_text


def cached(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--fail-rate", type=float, default=0.3)
    ap.add_argument(
        "--kill-at", type=int, nargs="*", default=[600, 1300], help="kill once this many answers are cached"
    )
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="api_faults."))
    rows = [{"id": f"q{i}", "prompt": f"question {i} about item {i * 7 % 13}"} for i in range(args.prompts)]
    (work / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.time()
    runs, kills = [], 0
    with FaultServer(fail_rate=args.fail_rate, slow_s=2.0, latency=0.02, retry_after="1", seed=0) as srv:
        cmd = [
            sys.executable,
            "-m",
            "potstill.cli.main",
            "generate",
            "--teacher",
            "openai:test-model",
            "--base-url",
            srv.base_url,
            "--prompts",
            "p.jsonl",
            "--out",
            "out",
            "--concurrency",
            str(args.concurrency),
            "--timeout",
            "1",
            "--backoff-base",
            "0.1",
            "--backoff-max",
            "2",
            "--max-attempts",
            "12",
        ]
        for threshold in [*args.kill_at, None]:
            t0 = time.time()
            proc = subprocess.Popen(
                cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
            if threshold is None:
                _, err = proc.communicate(timeout=900)
                runs.append(
                    {
                        "rc": proc.returncode,
                        "seconds": round(time.time() - t0, 1),
                        "cached_after": cached(out / "cache.sqlite"),
                    }
                )
                if proc.returncode != 0:
                    print(err.decode()[-3000:])
                break
            while proc.poll() is None and cached(out / "cache.sqlite") < threshold:
                time.sleep(0.02)
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
            runs.append(
                {"killed": killed, "seconds": round(time.time() - t0, 1), "cached_after": cached(out / "cache.sqlite")}
            )
            print(f"run {len(runs)}: {runs[-1]}", flush=True)
        log = list(srv.log)

    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    failed = (out / "failed.jsonl").read_text().splitlines()
    ids = [g["id"] for g in gens]
    wrong = sum((g["text"], g["finish_reason"]) != expected_text(r["prompt"], 64) for g, r in zip(gens, rows))
    db = sqlite3.connect(out / "cache.sqlite")
    cache = {json.loads(res)["text"]: created for res, created in db.execute("SELECT result, created FROM answers")}
    good = {expected_text(r["prompt"], 64)[0]: r["prompt"] for r in rows}
    bad_in_cache = sum(t not in good for t in cache)
    when = {good[t]: c for t, c in cache.items() if t in good}
    asked_after = sum(1 for e in log if e["prompt"] in when and e["t"] > when[e["prompt"]])
    outcomes = Counter(e["outcome"] for e in log if e["prompt"] != "ping")
    served_ok = Counter(e["prompt"] for e in log if e["outcome"] == "ok" and e["prompt"] != "ping")
    exactly_once = (
        ids == [r["id"] for r in rows]
        and wrong == 0
        and not failed
        and len(cache) == len(rows)
        and bad_in_cache == 0
        and asked_after == 0
    )
    n_req = sum(outcomes.values())
    result = {
        "benchmark": "api_faults",
        "prompts": len(rows),
        "kills": kills,
        "runs": runs,
        "requests": n_req,
        "fault_rate_seen": round(1 - outcomes["ok"] / max(n_req, 1), 3),
        "outcomes": dict(outcomes),
        "answered": len(gens),
        "unique_ids": len(set(ids)),
        "wrong_answers": wrong,
        "failed": len(failed),
        "cache_rows": len(cache),
        "failures_in_cache": bad_in_cache,
        "requests_after_cached": asked_after,
        "ok_responses_lost_to_kills": sum(served_ok.values()) - len(rows),
        "seconds": round(time.time() - started, 1),
        "exactly_once": exactly_once,
        "ok": exactly_once and kills == len(args.kill_at),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
