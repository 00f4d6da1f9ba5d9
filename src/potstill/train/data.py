"""Training pairs -> tokenized features, and the collator that pads them.

A *pair* is one training prompt and the teacher's answer::

    {"id": str, "messages": [{"role", "content"}, ...], "response_text": str,
     "response_token_ids": list[int] | None, "finish_reason": "stop" | "length",
     "top_logprobs": list[list[[int, float]]] | None}

A *feature* is ``{"input_ids", "labels"}`` (lists of ints; labels are -100 on the prompt) plus,
for top-k KD, ``{"topk_ids", "topk_logprobs"}`` holding one row per response token.
"""

from __future__ import annotations

import logging
import math

import torch

from ..chat import encode_prompt  # noqa: F401 - re-exported for the train stage
from ..errors import UserError
from ..losses import IGNORE_INDEX

log = logging.getLogger(__name__)


def encode_response(tokenizer, pair: dict, reuse_teacher_ids: bool) -> list[int]:
    """Response ids: the teacher's own ids when the tokenizers match, else ``response_text`` re-tokenized.

    Re-tokenized answers get the student's EOS appended unless the teacher was cut off
    (``finish_reason == "length"``), so the student learns to stop where the teacher stopped.
    """
    if reuse_teacher_ids and pair.get("response_token_ids") is not None:
        return [int(i) for i in pair["response_token_ids"]]
    ids = list(tokenizer(pair.get("response_text") or "", add_special_tokens=False).input_ids)
    if pair.get("finish_reason", "stop") != "length" and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def _topk_rows(pair: dict, n: int, vocab: int) -> tuple[list[list[int]], list[list[float]]]:
    rows = pair.get("top_logprobs")
    if not rows:
        raise UserError(
            f"pair '{pair.get('id')}' has no top_logprobs; kd with signal 'topk' needs them: "
            "rerun generate with teacher.top_logprobs > 0 (or use train.kd.signal=live)"
        )
    if len(rows) != n:
        raise UserError(
            f"pair '{pair.get('id')}': {len(rows)} top_logprobs rows for {n} response tokens; "
            "rerun generate with teacher.top_logprobs > 0"
        )
    ids, lps = [], []
    for row in rows:
        ids.append([int(t) for t, _ in row])
        lps.append([float(lp) for _, lp in row])
        if any(not 0 <= t < vocab for t in ids[-1]):
            raise UserError(f"pair '{pair.get('id')}': top_logprobs token id outside the vocabulary ({vocab})")
    return ids, lps


def build_features(
    pairs: list[dict], tokenizer, max_seq_len: int, reuse_teacher_ids: bool, topk: bool = False
) -> list[dict]:
    """Tokenize pairs into training features (prompt masked out of the labels).

    Sequences longer than ``max_seq_len`` lose prompt tokens from the left; at least one prompt
    token is kept (so ``labels[0]`` is always -100 and every response token is a prediction target),
    and a response that still does not fit is cut on the right. Pairs with no response token are
    dropped (logged).
    """
    feats, dropped = [], 0
    vocab = len(tokenizer)
    for pair in pairs:
        prompt = encode_prompt(tokenizer, pair.get("messages") or [])
        resp = encode_response(tokenizer, pair, reuse_teacher_ids)
        n_full = len(resp)
        if not prompt:
            prompt = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        resp = resp[: max_seq_len - 1]
        prompt = prompt[-(max_seq_len - len(resp)) :]
        if not resp:
            dropped += 1
            continue
        feat = {"input_ids": prompt + resp, "labels": [IGNORE_INDEX] * len(prompt) + resp}
        if topk:
            ids, lps = _topk_rows(pair, n_full, vocab)
            feat["topk_ids"], feat["topk_logprobs"] = ids[: len(resp)], lps[: len(resp)]
        feats.append(feat)
    if dropped:
        log.warning("dropped %d pair(s) with an empty response", dropped)
    if not feats:
        raise UserError("no training pairs with a non-empty response")
    return feats


class Collator:
    """Right-pads features into tensors: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``
    and, for top-k features, ``topk_ids`` / ``topk_logprobs`` ``[B, L, k]`` aligned with ``labels``
    (row ``t`` is the teacher's top-k for the token at position ``t``; padding: id 0, log-prob -inf).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, feats: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in feats)
        if self.multiple:
            n = math.ceil(n / self.multiple) * self.multiple
        b = len(feats)
        ids = torch.full((b, n), self.pad_id, dtype=torch.long)
        att = torch.zeros((b, n), dtype=torch.long)
        labels = torch.full((b, n), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(feats):
            m = len(f["input_ids"])
            ids[i, :m] = torch.tensor(f["input_ids"])
            att[i, :m] = 1
            labels[i, :m] = torch.tensor(f["labels"])
        batch = {"input_ids": ids, "attention_mask": att, "labels": labels}
        if "topk_ids" in feats[0]:
            k = max(len(r) for f in feats for r in f["topk_ids"])
            tid = torch.zeros((b, n, k), dtype=torch.long)
            tlp = torch.full((b, n, k), float("-inf"), dtype=torch.float32)
            for i, f in enumerate(feats):
                start, end = len(f["input_ids"]) - len(f["topk_ids"]), len(f["input_ids"])
                pad = [k - len(r) for r in f["topk_ids"]]
                tid[i, start:end] = torch.tensor([r + [0] * p for r, p in zip(f["topk_ids"], pad)])
                tlp[i, start:end] = torch.tensor([r + [float("-inf")] * p for r, p in zip(f["topk_logprobs"], pad)])
            batch["topk_ids"], batch["topk_logprobs"] = tid, tlp
        return batch
