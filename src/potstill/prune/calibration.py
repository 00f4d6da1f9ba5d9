"""Calibration data for pruning: chat records or token ids -> padded batches of the teacher's ids."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from ..chat import encode_prompt
from ..errors import UserError
from ..io import sha256_json


def calibration_ids(records: list, tokenizer, settings, vocab_size: int) -> list[list[int]]:
    """Token id sequences for calibration, at most ``settings.calibration_samples`` of them.

    ``records`` holds token id lists, or chat records ``{"messages": [...], "response_text": str?}``
    (potstill's prompt / pair format): the prompt through the tokenizer's chat template
    (:func:`potstill.chat.encode_prompt`), then the response and EOS when there is one. More records
    than wanted: a sample seeded by ``settings.seed``, in the given order. Each sequence is cut to
    ``settings.max_seq_len`` tokens (from the right).
    """
    if not records:
        raise UserError("no calibration data (give a few dozen to a few hundred prompts or token id lists)")
    chosen = range(len(records))
    if len(records) > settings.calibration_samples:
        chosen = sorted(random.Random(settings.seed).sample(chosen, settings.calibration_samples))
    out = []
    for i in chosen:
        ids = _ids(records[i], tokenizer, i)[: settings.max_seq_len]
        if not ids:
            raise UserError(f"calibration record {i} has no tokens")
        if any(not 0 <= t < vocab_size for t in ids):
            raise UserError(f"calibration record {i} has a token id outside the teacher's vocabulary ({vocab_size})")
        out.append(ids)
    return out


def _ids(record, tokenizer, i: int) -> list[int]:
    if isinstance(record, dict):
        if not isinstance(record.get("messages"), list):
            raise UserError(f"calibration record {i} has no 'messages' list (expected a chat record or token ids)")
        if tokenizer is None:
            raise UserError("chat calibration records need a tokenizer")
        ids = encode_prompt(tokenizer, record["messages"])
        if record.get("response_text"):
            ids += list(tokenizer(record["response_text"], add_special_tokens=False).input_ids)
            if tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
        return ids
    if isinstance(record, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in record):
        return list(record)
    raise UserError(f"calibration record {i} is neither a chat record (dict with 'messages') nor a list of token ids")


def calibration_hash(seqs: list[list[int]]) -> str:
    """Hash of the exact token ids the importance was measured on."""
    return sha256_json(seqs)


def batches(seqs: list[list[int]], batch_size: int, pad_id: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` ``[B, T]`` batches, in order."""
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        yield ids.to(device), mask.to(device)
