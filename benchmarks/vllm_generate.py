"""Teacher generation throughput on a GPU: the vLLM backend (``vllm:DIR``) vs the transformers backend.

The same prompts (``--prompts`` of them, default 512, cycled from the helpdesk example's training
prompts) are answered greedily by the same model directory (default ``examples/helpdesk/teacher``)
twice, with the generate stage's two engines:

* ``transformers``: :class:`potstill.teachers.hf.LocalGenerator`, batches of ``--batch-size``
  prompts (sorted by length, left padding, KV cache), after one untimed warm-up batch;
* ``vllm``: :class:`potstill.teachers.vllm.VLLMGenerator` (continuous batching, paged KV cache;
  CUDA graphs unless ``--enforce-eager``), after one untimed warm-up batch; the engine's start-up
  (weights, KV cache, graph capture) is reported separately as ``startup_s``.

Both run in ``--dtype`` (default bfloat16). Throughput = completion tokens / wall seconds of the
timed run. ``identical_share`` is the share of prompts whose greedy answers have the same token ids
under both engines (kernels and batch shapes differ, so near-ties can flip a token and the rest of
the answer with it); ``prefix_share`` the mean share of each answer both agree on before the first
difference.

Without vLLM or without a CUDA GPU it prints one line saying why and ends with
``{"benchmark": "vllm_generate", "skipped": REASON}`` (exit 0, so ``make bench`` goes on).

    python benchmarks/vllm_generate.py
    python benchmarks/vllm_generate.py --model /models/llama-3.1-8b-instruct --prompts 2048 --max-new-tokens 256

Last line of output: one JSON object with both throughputs, ``speedup`` (vLLM / transformers)
and the agreement figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from itertools import cycle, islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.data.load import SourceSpec, drop_empty, load_source
from potstill.progress import console
from potstill.teachers.base import GenerationSettings


def skip(reason: str) -> None:
    print(f"vllm_generate: skipped: {reason}")
    print(json.dumps({"benchmark": "vllm_generate", "skipped": reason}))
    sys.exit(0)


def prompts(path: Path, n: int) -> list[dict]:
    """``n`` prompt records cycled from ``path`` (unique ids)."""
    base, _ = drop_empty(load_source(SourceSpec(path=str(path)), path.parent))
    return [{**r, "id": f"{i:06d}-{r['id']}"} for i, r in enumerate(islice(cycle(base), n))]


def timed(gen, records: list[dict], settings: GenerationSettings, warmup: int) -> tuple[dict, dict]:
    """Answers by id, and the timing of ``gen.generate`` over ``records`` after a warm-up batch."""
    import torch

    list(gen.generate(records[:warmup], settings))
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = {r["id"]: r for r in gen.generate(records, settings)}
    torch.cuda.synchronize()
    secs = time.perf_counter() - started
    tokens = sum(r["usage"]["completion_tokens"] for r in out.values())
    return out, {"seconds": round(secs, 3), "completion_tokens": tokens, "tokens_per_s": round(tokens / secs, 1)}


def agreement(a: dict, b: dict) -> tuple[float, float]:
    """(share of identical answers, mean share of each answer agreed on before the first difference)."""
    same, prefix = 0, 0.0
    for i, ra in a.items():
        x, y = ra["token_ids"], b[i]["token_ids"]
        same += x == y
        n = next((j for j, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        prefix += n / max(len(x), len(y), 1)
    return round(same / len(a), 4), round(prefix / len(a), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "helpdesk" / "teacher"), help="model directory")
    ap.add_argument("--prompts-file", default=str(ROOT / "examples" / "helpdesk" / "data" / "train.jsonl"))
    ap.add_argument("--prompts", type=int, default=512, help="prompts answered by each engine")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--top-logprobs", type=int, default=0, help="also record the top-K log-probs per token")
    ap.add_argument("--batch-size", type=int, default=64, help="transformers batch size")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM's share of GPU memory")
    ap.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: the model's)")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs")
    args = ap.parse_args()

    try:
        import vllm
    except ImportError:
        skip("vLLM is not installed (pip install 'potstill[vllm]': Linux + CUDA GPU)")
    import torch

    if not torch.cuda.is_available():
        skip("no CUDA GPU (torch.cuda.is_available() is False)")
    from potstill.config import VLLMSettings
    from potstill.teachers.hf import LocalGenerator
    from potstill.teachers.vllm import VLLMGenerator

    console.quiet = True
    records = prompts(Path(args.prompts_file), args.prompts)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, top_logprobs=args.top_logprobs, batch_size=args.batch_size
    )

    hf = LocalGenerator(args.model, dtype=args.dtype, device="cuda")
    hf_out, hf_t = timed(hf, records, settings, warmup=args.batch_size)
    hf_t["batch_size"] = args.batch_size
    print(f"transformers: {hf_t}")
    del hf
    gc.collect()
    torch.cuda.empty_cache()

    started = time.perf_counter()
    engine = VLLMSettings(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
    )
    vl = VLLMGenerator(args.model, engine, dtype=args.dtype, max_logprobs=args.top_logprobs)
    startup = round(time.perf_counter() - started, 1)
    vl_out, vl_t = timed(vl, records, settings, warmup=min(64, len(records)))
    vl_t["startup_s"] = startup
    print(f"vllm: {vl_t}")

    speedup = round(vl_t["tokens_per_s"] / hf_t["tokens_per_s"], 2)
    same, prefix = agreement(hf_out, vl_out)
    print(
        f"speedup (vLLM / transformers tokens/s): {speedup}x; identical greedy answers: {same:.1%}; "
        f"agreed prefix: {prefix:.1%}"
    )
    print(
        json.dumps(
            {
                "benchmark": "vllm_generate",
                "model": args.model,
                "prompts": len(records),
                "max_new_tokens": args.max_new_tokens,
                "top_logprobs": args.top_logprobs,
                "dtype": args.dtype,
                "transformers": hf_t,
                "vllm": vl_t,
                "speedup": speedup,
                "identical_share": same,
                "prefix_share": prefix,
                "gpu": torch.cuda.get_device_name(0),
                "vllm_version": getattr(vllm, "__version__", None),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
