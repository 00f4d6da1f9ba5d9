"""``vllm:DIR`` teachers: the model directory DIR run by vLLM (optional extra: Linux + CUDA GPU).

Generation gives the records of :class:`potstill.teachers.hf.LocalGenerator` (see
:mod:`potstill.teachers.base`): prompts are formatted by the same chat template
(:func:`potstill.chat.encode_prompt`) and handed to vLLM as token ids, answers are decoded by the
same tokenizer, and ``top_logprobs`` are vLLM's raw log-probabilities (the untempered T=1
distribution; vLLM >= 0.8, the V1 engine). Greedy answers match the transformers backend up to the
numerics of the kernels (dtype, batch shapes): ``benchmarks/vllm_generate.py`` measures the share of
identical answers. A sampled answer is seeded per prompt (``seed`` and the prompt's ids), so it does
not depend on batching, resumption or sharding.

Signal capture: :func:`vllm_response_topk` scores ``prompt + response`` in one prefill per
sequence (``prompt_logprobs=k``, one generated token) and returns the teacher's top-k at every
response position.

vLLM is imported only when an engine is built (:func:`import_vllm`); the conversions
(:func:`record_from_output`, :func:`topk_from_prompt_logprobs`) work on any object with the
attribute structure of vLLM's ``RequestOutput`` (tests use ``SimpleNamespace`` fakes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import load_tokenizer
from .base import GenerationSettings, PromptGenerator
from .limits import model_context

MISSING = "vllm: teacher needs vLLM: pip install 'potstill[vllm]' (Linux + CUDA GPU)"
CHUNK = 512  # prompts handed to vLLM at once (it batches them itself); one chunk is the unit of resumption
MAX_LOGPROBS = 20  # vLLM's default cap on logprobs / prompt_logprobs per position
PAD_MARGIN = 4  # extra prompt log-probs asked for when the output layer has padding rows (dropped ids)


def parse_vllm(model: str) -> str | None:
    """``"DIR"`` for ``"vllm:DIR"``; ``None`` for any other teacher (a model directory, an API)."""
    prefix, sep, rest = str(model).partition(":")
    if not (sep and prefix == "vllm"):
        return None
    if not rest.strip():
        raise UserError("teacher 'vllm:' names no model directory (expected 'vllm:DIR')")
    return rest


def import_vllm():
    """The ``vllm`` module, or the one-line :class:`UserError` saying how to install it."""
    try:
        import vllm  # defers vllm (optional, CUDA)
    except ImportError:
        raise UserError(MISSING) from None
    return vllm


def make_engine(path: str | Path, settings, seed: int = 0, dtype: str = "auto", max_logprobs: int = 0):
    """A ``vllm.LLM`` for the model directory ``path`` with the ``teacher.vllm`` engine ``settings``
    (:class:`potstill.config.VLLMSettings`)."""
    vllm = import_vllm()
    return vllm.LLM(
        model=str(path),
        tokenizer=str(path),
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        seed=seed,
        dtype=dtype,
        max_logprobs=max(MAX_LOGPROBS, int(max_logprobs)),
    )


# ----------------------------------------------------------------------------------------------
# Pure conversions: vLLM outputs -> our records and arrays


def top_entries(position, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely ``(token_id, logprob)`` of one position's ``{token_id: Logprob}``.

    vLLM adds the sampled (or, for prompt log-probs, the actual) token when it is not among the
    top k, so a position may hold ``k + 1`` entries; ties are broken by vLLM's rank, then the id.
    """
    items = sorted(
        position.items(), key=lambda kv: (-float(kv[1].logprob), getattr(kv[1], "rank", None) or 0, int(kv[0]))
    )
    return [(int(t), float(lp.logprob)) for t, lp in items[:k]]


def record_from_output(output, k: int = 0, decode: Callable[[list[int]], str] | None = None) -> dict:
    """One vLLM ``RequestOutput`` -> a generation record without ``id`` (:mod:`potstill.teachers.base`).

    ``k``: top log-probs per generated token (0: none; vLLM must have been asked for ``logprobs=k``);
    ``decode``: ids -> text, as the transformers backend decodes (default: vLLM's own ``text``).
    ``token_ids`` keep the final stop token, as vLLM returns them.
    """
    out = output.outputs[0]
    if out.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM request ended with finish_reason={out.finish_reason!r}")
    ids = [int(t) for t in out.token_ids]
    if decode is not None:
        text = decode(ids[:-1] if out.finish_reason == "stop" and ids else ids).strip()
    else:
        text = (out.text or "").strip()
    top = None
    if k > 0:
        if out.logprobs is None or len(out.logprobs) < len(ids):
            raise RuntimeError("vLLM returned no log-probs for a request that asked for them")
        top = [[[t, round(lp, 6)] for t, lp in top_entries(out.logprobs[j], k)] for j in range(len(ids))]
    return {
        "text": text,
        "token_ids": ids,
        "finish_reason": out.finish_reason,
        "usage": {"prompt_tokens": len(output.prompt_token_ids), "completion_tokens": len(ids)},
        "top_logprobs": top,
    }


def topk_from_prompt_logprobs(
    prompt_logprobs: Sequence, start: int, n: int, k: int, vocab_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(ids int64 [n, k], logprobs float32 [n, k])`` at prompt positions ``start .. start+n-1``.

    ``prompt_logprobs`` is vLLM's per prompt token list (``None`` at position 0, then
    ``{token_id: Logprob}`` with the top k and the actual token); entry ``start + t`` is the
    distribution over response token ``t`` when the response starts at ``start``. Ids at or above
    ``vocab_size`` (padding rows of the output layer) are left out.
    """
    ids = np.zeros((n, k), np.int64)
    lps = np.zeros((n, k), np.float32)
    for t in range(n):
        pos = prompt_logprobs[start + t]
        if pos is None:
            raise ValueError(f"no prompt log-probs at position {start + t} (the first prompt token has none)")
        if vocab_size is not None:
            pos = {i: lp for i, lp in pos.items() if int(i) < vocab_size}
        entries = top_entries(pos, k)
        if len(entries) < k:
            raise ValueError(f"position {start + t} has {len(entries)} log-probs in the vocabulary, fewer than k={k}")
        ids[t] = [e[0] for e in entries]
        lps[t] = [e[1] for e in entries]
    return ids, lps


def topk_rows(ids: np.ndarray, logprobs: np.ndarray) -> dict[str, np.ndarray]:
    """Top-k ids/log-probs (T=1) -> the unpacked rows of a ``topk`` store
    (:func:`potstill.signals.formats.encode_rows`)."""
    tail = np.clip(1.0 - np.exp(logprobs.astype(np.float64)).sum(-1), 0.0, 1.0)
    return {"ids": ids.astype(np.int64), "logprobs": logprobs.astype(np.float16), "tail": tail.astype(np.float16)}


def request_seed(seed: int, prompt: list[int]) -> int:
    """The sampling seed of one prompt: from ``seed`` and its ids (the same wherever it is answered)."""
    h = hashlib.sha256(f"{int(seed)}:{','.join(map(str, prompt))}".encode()).hexdigest()
    return int(h[:8], 16)


def sampling_kwargs(settings: GenerationSettings, prompt: list[int]) -> dict:
    """``vllm.SamplingParams`` arguments for one prompt (greedy is ``temperature=0``)."""
    kw = {"n": 1, "max_tokens": settings.max_new_tokens, "logprobs": settings.top_logprobs or None, "detokenize": False}
    if settings.do_sample:
        kw.update(temperature=settings.temperature, top_p=settings.top_p, seed=request_seed(settings.seed, prompt))
    else:
        kw.update(temperature=0.0, top_p=1.0)
    return kw


# ----------------------------------------------------------------------------------------------
# Engines


class VLLMGenerator(PromptGenerator):
    """Generates answers with vLLM from the model directory ``path``.

    The interface and records of :class:`~potstill.teachers.hf.LocalGenerator`, whose
    :meth:`generate` loop (prompt encoding, length-sorted chunks, ``on_batch``) it shares; vLLM
    replaces the transformers model. ``settings`` are the ``teacher.vllm`` engine settings; ``llm``
    an already built engine (tests, notebooks).
    """

    def __init__(
        self,
        path: str | Path,
        settings,
        seed: int = 0,
        dtype: str = "auto",
        max_logprobs: int = 0,
        llm=None,
        tokenizer=None,
    ):
        if llm is None:
            import_vllm()  # the install hint before anything is loaded
        self.path = Path(path)
        self.tokenizer = tokenizer or load_tokenizer(path, padding_side="left")
        self.llm = (
            llm if llm is not None else make_engine(path, settings, seed=seed, dtype=dtype, max_logprobs=max_logprobs)
        )

        self.context = getattr(settings, "max_model_len", None) or model_context(path)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings) -> list[dict]:
        """Generate for tokenized prompts (vLLM schedules them itself); returns partial records (no id)."""
        vllm = import_vllm()
        params = [vllm.SamplingParams(**sampling_kwargs(settings, p)) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [record_from_output(o, settings.top_logprobs, self._decode) for o in outs]

    def generate(
        self,
        records: list[dict],
        settings: GenerationSettings,
        on_batch: Callable[[list[dict]], None] | None = None,
        check_context: bool = False,
    ) -> Iterator[dict]:
        """As :meth:`LocalGenerator.generate`, in chunks of at least ``CHUNK`` prompts."""
        return super().generate(
            records, replace(settings, batch_size=max(settings.batch_size, CHUNK)), on_batch, check_context
        )


def vllm_response_topk(
    llm, batch: list[tuple[list[int], list[int]]], k: int, vocab_size: int | None = None, margin: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The teacher's top-k at every response position of each ``(prompt_ids, response_ids)``.

    One prefill per sequence over ``prompt + response`` with ``prompt_logprobs`` (and one generated
    token, discarded); returns ``(ids [n, k], logprobs [n, k])`` per pair, ``n = len(response)``,
    log-probs at T=1. vLLM is asked for ``k + margin`` log-probs per position, so that ``k`` remain
    once ids at or above ``vocab_size`` (padding rows of the output layer) are dropped.
    """
    vllm = import_vllm()
    params = vllm.SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=k + margin, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": list(p) + list(r)} for p, r in batch], params, use_tqdm=False)
    return [
        topk_from_prompt_logprobs(o.prompt_logprobs, len(p), len(r), k, vocab_size) for o, (p, r) in zip(outs, batch)
    ]


def output_rows(path: str | Path) -> int | None:
    """Rows of the model's output layer (``vocab_size`` in ``config.json``; None when not stated)."""

    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    v = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return int(v) if v else None


def capture_scorer(
    path: str | Path, settings, k: int, vocab_size: int, seed: int = 0, dtype: str = "auto", llm=None
) -> Callable[[list[tuple[list[int], list[int]]]], list[dict[str, np.ndarray]]]:
    """For :func:`potstill.signals.capture.capture_signals`: a function ``[(prompt, response)] -> [rows]``
    giving each pair's unpacked ``topk`` store rows (T=1) from a vLLM engine on ``path``."""
    rows = output_rows(path)
    margin = PAD_MARGIN if rows is not None and rows > vocab_size else 0
    engine = llm if llm is not None else make_engine(path, settings, seed=seed, dtype=dtype, max_logprobs=k + margin)

    def score(batch):
        return [topk_rows(ids, lps) for ids, lps in vllm_response_topk(engine, batch, k, vocab_size, margin)]

    return score
