"""Throughput of API generation: concurrency 32 vs sequential, against a local server with fixed latency.

The server is ``tests/faultserver.py`` in its own process, answering every request after
``--latency`` seconds (no faults). The client is the real generate stage
(:func:`potstill.teachers.apistage.run_api_generate`, preflight request included) with a fresh
cache per run; throughput = answered prompts / generation seconds.

Last line of output: one JSON object with ``speedup`` (concurrent / sequential throughput).
Acceptance: ``speedup >= 10`` at 200 ms latency and concurrency 32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.config import TeacherConfig
from potstill.progress import console
from potstill.teachers.apistage import run_api_generate


def measure(base_url: str, n: int, concurrency: int, tag: str) -> dict:
    records = [{"id": f"{tag}{i}", "messages": [{"role": "user", "content": f"{tag} prompt {i}"}]} for i in range(n)]
    cfg = TeacherConfig(model="openai:test-model", base_url=base_url, concurrency=concurrency, max_new_tokens=16)
    with tempfile.TemporaryDirectory() as d:
        stats = run_api_generate(cfg, records, Path(d), cache_path=Path(d) / "cache.sqlite")
    assert stats["answered"] == n and stats["failed"] == 0, stats
    secs = stats["generation_seconds"]
    return {"prompts": n, "concurrency": concurrency, "seconds": secs, "answers_per_s": round(n / secs, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential-prompts", type=int, default=30)
    ap.add_argument("--concurrent-prompts", type=int, default=640)
    args = ap.parse_args()
    console.quiet = True  # no progress bars in the benchmark's output
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faultserver.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}/v1"
        seq = measure(url, args.sequential_prompts, 1, "s")
        con = measure(url, args.concurrent_prompts, args.concurrency, "c")
    finally:
        server.terminate()
        server.wait()
    speedup = con["answers_per_s"] / seq["answers_per_s"]
    print(f"sequential: {seq}")
    print(f"concurrency {args.concurrency}: {con}")
    print(
        json.dumps(
            {
                "benchmark": "api_generate",
                "latency_s": args.latency,
                "sequential": seq,
                "concurrent": con,
                "speedup": round(speedup, 2),
                "ideal_speedup": args.concurrency,
                "meets_10x": speedup >= 10,
            }
        )
    )


if __name__ == "__main__":
    main()
