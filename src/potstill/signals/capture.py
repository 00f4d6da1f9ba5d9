"""Capture: run the teacher once over the training pairs and store its soft labels.

The teacher is run teacher-forced over ``prompt + response`` (the prompt formatted by
:func:`potstill.chat.encode_prompt`, the response being the teacher's own ``response_token_ids``
from the generate stage, or ``response_text`` tokenized), in length-sorted batches with left
padding, and its distribution at temperature ``T`` at every response position is compressed to
the chosen format (:mod:`potstill.signals.formats`) and written to shards
(:mod:`potstill.signals.store`).

Resumable by shard: shards are planned up front from the pairs (consecutive pairs, about
``shard_mb`` MB each) and each finished shard leaves a ``shard-NNNNN.json`` record; a rerun with
the same settings keeps every finished shard whose files still hash to their record and computes
only the rest. ``manifest.json`` is written last. Sampling is seeded per example (``seed`` and
the example id), so a shard's content does not depend on batching, resumption or device order.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..chat import pair_ids
from ..errors import UserError
from ..io import read_json, sha256_bytes, sha256_json
from ..models import default_device, load_model, load_tokenizer, model_hash, tokenizer_fingerprint
from ..progress import track
from ..teachers.vllm import capture_scorer
from . import formats as F
from .store import MANIFEST, sequence_hash, shard_name, shard_record_ok, write_manifest, write_shard

log = logging.getLogger(__name__)


def _example_rng(seed: int, example_id: str) -> np.random.Generator:
    h = int(hashlib.sha256(str(example_id).encode()).hexdigest()[:16], 16)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, h]))


def check_settings(
    fmt: str, vocab_size: int, k: int | None, draws: int | None, temperature: float, sampling: str
) -> None:
    if fmt not in F.FORMATS:
        raise UserError(f"unknown signal format '{fmt}' (expected one of {', '.join(F.FORMATS)})")
    if temperature is None or not temperature > 0:
        raise UserError(f"capture temperature must be > 0, got {temperature}")
    if fmt == "topk" and not (k and 1 <= int(k) <= vocab_size):
        raise UserError(f"top-k capture needs 1 <= k <= vocabulary size ({vocab_size}), got {k}")
    if fmt == "sampled":
        if not (draws and 1 <= int(draws) <= F.MAX_DRAWS):
            raise UserError(f"sampled capture needs 1 <= draws <= {F.MAX_DRAWS}, got {draws}")
        if sampling not in F.SAMPLING:
            raise UserError(f"unknown sampling '{sampling}' (expected one of {', '.join(F.SAMPLING)})")


def _plan_shards(lengths: list[int], per_shard: int) -> list[list[int]]:
    """Consecutive example indices, about ``per_shard`` positions per shard (at least one example)."""
    shards, cur, n = [], [], 0
    for i, length in enumerate(lengths):
        if cur and n + length > per_shard:
            shards.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += length
    if cur or not shards:
        shards.append(cur)
    return shards


def _forward_kwargs(model) -> str | None:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


@torch.inference_mode()
def teacher_response_logits(model, batch: list[tuple[list[int], list[int]]], pad_id: int, device) -> list[torch.Tensor]:
    """Teacher logits at each example's response positions: ``[len(response), V_model]`` each.

    Row ``t`` is the output at the position of the token before response token ``t`` (so it is
    the distribution over response token ``t``). Sequences are left-padded, so every response
    ends at the last column and only the last ``max(len(response)) + 1`` columns of logits are
    kept (``logits_to_keep``) when the model supports it.
    """
    seqs = [p + r for p, r in batch]
    width = max(len(s) for s in seqs)
    max_n = max(len(r) for _, r in batch)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        att[i, width - len(s) :] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=ids.to(device), attention_mask=att.to(device), position_ids=pos.to(device), use_cache=False)
    keep = _forward_kwargs(model)
    if keep:
        kwargs[keep] = max_n + 1
    logits = model(**kwargs).logits
    kept = logits.shape[1]
    out = []
    for i, (_, r) in enumerate(batch):
        n = len(r)
        end = kept - 1  # the last column predicts past the end
        out.append(logits[i, end - n : end])
    return out


def capture_signals(
    teacher_dir: str | os.PathLike,
    pairs: list[dict],
    out_dir: str | os.PathLike,
    fmt: str = "sampled",
    k: int | None = 12,
    draws: int | None = 64,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    sampling: str = "systematic",
    dtype: str = "float32",
    device: str | None = None,
    work_dir: str | os.PathLike | None = None,
    shard_mb: float = 64.0,
    teacher_hash: str | None = None,
    model=None,
    vllm=None,
) -> dict:
    """Run the teacher over ``pairs`` and write a signal store to ``out_dir``; returns its manifest.

    Args:
        teacher_dir: the teacher's model directory (``config.json``, weights, tokenizer).
        pairs: training pairs (``id``, ``messages``, ``response_token_ids`` / ``response_text``,
            ``finish_reason``), e.g. :meth:`potstill.context.RunContext.pairs`.
        fmt: ``"dense"``, ``"topk"`` or ``"sampled"``; ``k`` (top-k), ``draws`` (sampled ``N``)
            and ``sampling`` (``"systematic"`` or ``"multinomial"``) as in
            :mod:`potstill.signals.formats`.
        temperature: ``T`` of the stored distributions (training must use the same T).
        batch_size: sequences per teacher forward pass.
        seed: sampling seed (per example: ``seed`` and the example id).
        tokenizer_dir: the tokenizer to encode with and record (default: the teacher's); it
            must be the student's for KD (training checks the fingerprint).
        work_dir: where shards are written and resumed from (default ``out_dir``); finished
            shards are then moved into ``out_dir`` with the manifest.
        shard_mb: target shard size (a killed capture loses at most the shard being computed: 64 MB is
            ~2M tokens of a sampled store at V=128k).
        teacher_hash: the teacher's model hash for the provenance (default: computed, which reads
            the weights once).
        model: an already loaded teacher (tests, notebooks).
        vllm: run the teacher with vLLM, with these engine settings (``teacher.vllm``,
            :func:`potstill.teachers.vllm.capture_scorer`): one prefill per sequence with prompt
            log-probs; ``topk`` at ``temperature`` 1 only (vLLM returns the T=1 top-k, not the logits).
    """
    teacher_dir = Path(teacher_dir)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir
    tok = load_tokenizer(tokenizer_dir or teacher_dir, padding_side="left")
    vocab = len(tok)
    k = int(k) if fmt == "topk" else None
    draws = int(draws) if fmt == "sampled" else None
    check_settings(fmt, vocab, k, draws, temperature, sampling)
    if vllm is not None and (fmt != "topk" or float(temperature) != 1.0):
        raise UserError(
            f"capture with vLLM stores top-k log-probs at T=1 only (got {fmt} at T={temperature}): "
            "use store_format topk and temperature 1, or a plain model directory as the teacher"
        )

    examples, seen = [], set()
    for pair in pairs:
        eid = str(pair.get("id"))
        if eid in seen:
            raise UserError(f"pair id '{eid}' appears twice; capture needs unique ids")
        seen.add(eid)
        prompt, resp = pair_ids(tok, pair, reuse_teacher_ids=True)
        examples.append((eid, prompt, resp, sequence_hash(prompt, resp)))
    if not examples:
        raise UserError("no pairs to capture")

    if teacher_hash is None:
        teacher_hash = model_hash(teacher_dir)
    template = getattr(tok, "chat_template", None)
    settings = {
        "format": fmt,
        "k": k if fmt == "topk" else (vocab if fmt == "dense" else None),
        "draws": draws,
        "sampling": sampling if fmt == "sampled" else None,
        "temperature": float(temperature),
        "vocab_size": vocab,
        "id_bits": F.id_bits(vocab),
        "entry_bytes": F.entry_bytes(vocab, draws) if fmt == "sampled" else None,
        "seed": int(seed),
    }
    provenance = {
        "teacher": {
            "path": str(teacher_dir),
            "model_hash": teacher_hash,
            "dtype": dtype,
            **({"engine": "vllm"} if vllm is not None else {}),
        },
        "tokenizer": {
            "path": str(tokenizer_dir or teacher_dir),
            "fingerprint": tokenizer_fingerprint(tok),
            "chat_template_sha256": sha256_bytes(template.encode()) if isinstance(template, str) else None,
        },
    }
    key = sha256_json({**settings, **provenance})
    per_pos = F.bytes_per_position_estimate(fmt, vocab, k, draws)
    per_shard = max(1, int(shard_mb * 1e6 / per_pos))
    plan = _plan_shards([len(e[2]) for e in examples], per_shard)

    want_index = [[[examples[i][0], len(examples[i][2]), examples[i][3]] for i in members] for members in plan]
    done = _finished_store(out_dir, key, want_index)
    if done is not None:
        log.info("capture: %s is complete with these settings", out_dir)
        return done
    records: list[dict | None] = []
    for si, _members in enumerate(plan):
        rec_path = work / f"{shard_name(si)}.json"
        rec = None
        if rec_path.is_file():
            try:
                rec = read_json(rec_path)
            except UserError:
                rec = None
        if rec is not None and (
            rec.get("key") != key
            or [[e, n, h] for e, n, _, h in rec.get("index", [])] != want_index[si]
            or not shard_record_ok(work, rec)
        ):
            rec = None
        records.append(rec)
    todo = [si for si, rec in enumerate(records) if rec is None]
    if (out_dir / MANIFEST).exists():  # the store is being rewritten: it is incomplete until the end
        (out_dir / MANIFEST).unlink()
    if len(todo) < len(plan):
        log.info("capture: %d of %d shards already done", len(plan) - len(todo), len(plan))

    if todo:
        score = None
        if vllm is not None:  # vLLM gives the top-k rows directly (no logits)
            score = capture_scorer(teacher_dir, vllm, k, vocab, seed=seed, dtype=dtype)
        else:
            device = device or default_device()
            if model is None:
                model = load_model(teacher_dir, dtype=dtype)
            model.to(device).eval()
            rows_model = (
                model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else vocab
            )
            if rows_model < vocab:
                raise UserError(
                    f"the teacher has {rows_model} output rows for a {vocab}-token tokenizer", str(teacher_dir)
                )
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        total = sum(1 for si in todo for i in plan[si] if examples[i][2])
        with track(total, "capture") as bar:
            for si in todo:
                members = plan[si]
                rows: dict[int, dict] = {}
                order = sorted(members, key=lambda i: len(examples[i][1]) + len(examples[i][2]))
                for b in range(0, len(order), batch_size):
                    chunk = [i for i in order[b : b + batch_size] if examples[i][2]]
                    for i in order[b : b + batch_size]:
                        if not examples[i][2]:
                            rows[i] = F.empty_rows(fmt, vocab, k)
                    if not chunk:
                        continue
                    pairs_ids = [(examples[i][1], examples[i][2]) for i in chunk]
                    if score is not None:
                        rows.update(zip(chunk, score(pairs_ids)))
                        bar.advance(len(chunk), tokens=sum(len(examples[i][2]) for i in chunk))
                        continue
                    outs = teacher_response_logits(model, pairs_ids, pad, device)
                    for i, logits in zip(chunk, outs):
                        rng = _example_rng(seed, examples[i][0]) if fmt == "sampled" else None
                        rows[i] = F.encode_rows(
                            fmt, logits[:, :vocab], temperature, k=k, draws=draws, sampling=sampling, rng=rng
                        )
                    bar.advance(len(chunk), tokens=sum(len(examples[i][2]) for i in chunk))
                records[si] = write_shard(
                    work,
                    si,
                    fmt,
                    [(examples[i][0], rows[i], examples[i][3]) for i in members],
                    vocab,
                    k=k,
                    draws=draws,
                    key=key,
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    if work != out_dir:
        for rec in records:
            for spec in rec["files"].values():
                _link_or_copy(work / spec["file"], out_dir / spec["file"])
    keep = {spec["file"] for rec in records for spec in rec["files"].values()}
    manifest = write_manifest(out_dir, {**settings, "capture_key": key}, records, provenance)
    for p in out_dir.glob("shard-*"):
        if p.name not in keep and p.is_file():
            p.unlink()  # shard records (now in the manifest), shards of an earlier capture with another plan
    return manifest


def _finished_store(out_dir: Path, key: str, want_index: list) -> dict | None:
    """The manifest of a complete store in ``out_dir`` captured with these settings, else None."""
    try:
        m = read_json(out_dir / MANIFEST)
        if m.get("capture_key") != key or [[[e, n, h] for e, n, _, h in s["index"]] for s in m["shards"]] != want_index:
            return None
        if all(shard_record_ok(out_dir, s) for s in m["shards"]):
            return m
    except (UserError, KeyError, TypeError, ValueError):
        pass
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
