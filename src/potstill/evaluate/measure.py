"""Measured speed and memory of one model on this machine.

:func:`measure_model` runs the measurement in a fresh subprocess
(``python -m potstill.evaluate.measure``, JSON spec on stdin, JSON result on stdout) so that the
peak memory reported is the model's own, not the pipeline's. The child loads the model on the
engine asked for (:func:`potstill.engines.make_generator`: ``hf``, ``ct2``, ``ct2-int8``), warms up, then

* **batch 1** - answers ``queries`` prompts one at a time (greedy), timing each request;
* **batched load** - answers ``batch_size * k`` prompts in batches of ``batch_size``, with
  ``k = max(1, ceil(queries / batch_size))``, in the given order (as a server would get them), and
  again until at least :data:`MIN_BATCHED_S` has passed (at most :data:`MAX_PASSES` times).

Prompt records are cycled when there are fewer than needed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..chat import encode_prompt
from ..engines import make_generator
from ..models import check_model_dir
from ..teachers.base import GenerationSettings

MIN_BATCHED_S = 1.0  # the batched load is repeated until it has run this long: a fast engine's one batch
MAX_PASSES = 50  # takes milliseconds, too short to time on a noisy machine
RESULT_KEYS = (
    "params",
    "engine",
    "device",
    "torch_threads",
    "latency_p50_s",
    "latency_p95_s",
    "latency_mean_s",
    "latencies_s",
    "tokens_per_s",
    "batched_queries_per_s",
    "batched_tokens_per_s",
    "mean_prompt_tokens",
    "mean_completion_tokens",
    "peak_rss_mb",
    "cuda_peak_mb",
)


def measure_model(
    path,
    *,
    init: str = "pretrained",
    dtype: str = "float32",
    seed: int = 0,
    records: list[dict],
    max_new_tokens: int,
    queries: int,
    batch_size: int,
    device: str | None = None,
    timeout_s: float | None = None,
    engine: str = "hf",
) -> dict:
    """Measure latency, throughput and peak memory of the model at ``path`` in a fresh subprocess.

    ``records`` are prompt records ``{"id", "messages": [...]}``. Returns a dict with (at least)
    ``params``, ``engine``, ``device``, ``torch_threads``, ``latency_p50_s``, ``latency_p95_s``,
    ``latency_mean_s``, ``latencies_s`` (one per batch-1 query), ``tokens_per_s`` (generated tokens /
    batch-1 time), ``batched_queries_per_s``, ``batched_tokens_per_s``, ``mean_prompt_tokens``,
    ``mean_completion_tokens``, ``peak_rss_mb`` (max RSS of the subprocess), ``cuda_peak_mb`` (None
    without CUDA), plus the settings used. A bad model path is a :class:`UserError`; any failure
    inside the subprocess is a ``RuntimeError`` carrying the tail of its stderr.
    """
    if not records:
        raise ValueError("measure_model needs at least one prompt record")
    if queries < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("queries, batch_size and max_new_tokens must be >= 1")
    check_model_dir(path, need_weights=(init == "pretrained"))
    if engine != "hf" and init == "pretrained":  # engine errors as one line here; the child finds it converted
        from ..engines.ct2 import ct2_model_dir  # defers ctranslate2

        ct2_model_dir(path)
    spec = {
        "path": str(Path(path).resolve()),
        "init": init,
        "dtype": dtype,
        "seed": seed,
        "device": device,
        "engine": engine,
        "records": [{"id": r.get("id"), "messages": r["messages"]} for r in records],
        "max_new_tokens": max_new_tokens,
        "queries": queries,
        "batch_size": batch_size,
    }
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the directory that holds the potstill package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "potstill.evaluate.measure"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"measuring {path} timed out after {timeout_s}s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-20:])
        raise RuntimeError(f"measuring {path} failed (exit {proc.returncode}):\n{tail}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as e:
        raise RuntimeError(f"measuring {path}: no JSON result on stdout:\n{proc.stdout[-2000:]}") from e


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty list."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _peak_rss_mb() -> float:

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _run(spec: dict) -> dict:
    """The child's side: load, warm up, time batch 1 and batched load."""
    import torch  # defers torch

    cuda = (spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from transformers import AutoModelForCausalLM, AutoTokenizer  # defers transformers (imported before the clock)  # noqa: F401

    t0 = time.perf_counter()
    gen = make_generator(
        spec.get("engine", "hf"),
        spec["path"],
        dtype=spec["dtype"],
        init=spec["init"],
        seed=spec["seed"],
        device=spec.get("device"),
    )
    load_s = time.perf_counter() - t0
    torch.manual_seed(spec["seed"])
    settings = GenerationSettings(
        max_new_tokens=spec["max_new_tokens"], do_sample=False, batch_size=1, seed=spec["seed"]
    )
    prompts = [encode_prompt(gen.tokenizer, r["messages"]) for r in spec["records"]]
    queries, bs = spec["queries"], spec["batch_size"]

    def take(n: int) -> list[list[int]]:
        return [prompts[i % len(prompts)] for i in range(n)]

    gen.generate_batch(take(1), settings)  # warm-up: batch 1 at full length
    gen.generate_batch(take(bs), GenerationSettings(max_new_tokens=2, do_sample=False, batch_size=bs))  # and batched
    sync()

    latencies, completion, prompt_tokens = [], [], []
    for p in take(queries):
        start = time.perf_counter()
        out = gen.generate_batch([p], settings)
        sync()
        latencies.append(time.perf_counter() - start)
        completion.append(out[0]["usage"]["completion_tokens"])
        prompt_tokens.append(len(p))

    k = max(1, math.ceil(queries / bs))
    batched = take(bs * k)
    batched_tokens = passes = 0
    start = time.perf_counter()
    while passes == 0 or (time.perf_counter() - start < MIN_BATCHED_S and passes < MAX_PASSES):
        for i in range(0, len(batched), bs):
            outs = gen.generate_batch(batched[i : i + bs], settings)
            batched_tokens += sum(o["usage"]["completion_tokens"] for o in outs)
        sync()
        passes += 1
    batched_s = time.perf_counter() - start

    total = sum(latencies)
    return {
        "params": gen.params,
        "engine": "hf" if spec["init"] != "pretrained" else spec.get("engine", "hf"),
        "device": str(gen.device),
        "torch_threads": torch.get_num_threads(),
        "dtype": spec["dtype"],
        "load_s": load_s,
        "queries": queries,
        "batch_size": bs,
        "batched_queries": len(batched) * passes,
        "max_new_tokens": spec["max_new_tokens"],
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": total / len(latencies),
        "latencies_s": latencies,
        "tokens_per_s": sum(completion) / total if total > 0 else None,
        "batched_queries_per_s": len(batched) * passes / batched_s if batched_s > 0 else None,
        "batched_tokens_per_s": batched_tokens / batched_s if batched_s > 0 else None,
        "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
        "mean_completion_tokens": sum(completion) / len(completion),
        "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def main() -> int:
    """Child entry point: JSON spec on stdin, one JSON line on stdout; logs go to stderr."""
    spec = json.loads(sys.stdin.read())
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # keep library chatter off the result channel
    try:
        result = _run(spec)
    finally:
        sys.stdout = real_stdout
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def machine() -> str:
    """A short description of this machine for the report."""
    import torch  # defers torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}"
