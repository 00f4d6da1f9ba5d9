"""Training pairs -> tokenized features, and the collator that pads them.

A *pair* is one training prompt and the teacher's answer::

    {"id": str, "messages": [{"role", "content"}, ...], "response_text": str,
     "response_token_ids": list[int] | None, "finish_reason": "stop" | "length",
     "top_logprobs": list[list[[int, float]]] | None}

A *feature* is ``{"input_ids", "labels"}`` (lists of ints; labels are -100 on the prompt) plus,
for top-k KD, ``{"topk_ids", "topk_logprobs"}`` holding one row per response token, or, for a
generic sparse teacher target (a signal store, or top-k log-probs through the same interface,
:mod:`potstill.signals`), ``{"target_ref"}``: a :class:`TargetRef` whose rows are read from the
source only when the :class:`Collator` builds the batch (a memory-mapped store is never loaded
whole). Eager ``{"target_ids", "target_probs"}`` arrays ``[resp_len, k]`` are accepted too.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..chat import encode_prompt, encode_response, pair_ids  # noqa: F401 - re-exported (tests, train stage)
from ..errors import UserError
from ..losses import IGNORE_INDEX
from ..signals import SignalStore
from ..signals.store import sequence_hash

log = logging.getLogger(__name__)


class TargetRef:
    """A lazy handle on one example's sparse teacher target: ``load() -> (ids [n, k], probs [n, k])``.

    ``source`` is anything with ``get(example_id) -> (ids, probs)`` (a
    :class:`~potstill.signals.store.SignalStore`, :class:`~potstill.signals.adapters.TopLogprobsTargets`);
    ``n`` is the number of response rows kept (the rest were truncated away).
    """

    __slots__ = ("source", "example_id", "n")

    def __init__(self, source, example_id: str, n: int):
        self.source, self.example_id, self.n = source, example_id, n

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        ids, probs = self.source.get(self.example_id)
        return ids[: self.n], probs[: self.n]

    def __repr__(self) -> str:
        return f"TargetRef({self.example_id!r}, n={self.n})"


def open_signal_store(path, tokenizer, temperature: float, verify: str = "lazy", who: str = "student"):
    """Open a signal store for training with ``tokenizer`` at KD temperature ``temperature``.

    UserError if the store's tokenizer fingerprint is not ``tokenizer``'s (naming both), or if it
    was captured at another temperature (its targets are the teacher's distribution at that T).
    """

    store = SignalStore(path, verify=verify)
    store.check_tokenizer(tokenizer, who=who)
    if not math.isclose(store.temperature, float(temperature), rel_tol=1e-6):
        raise UserError(
            f"the signal store holds the teacher at temperature {store.temperature:g} but train.kd.temperature "
            f"is {float(temperature):g}; recapture with --temperature {float(temperature):g} "
            f"(or set train.kd.temperature={store.temperature:g})",
            str(store.path),
        )
    return store


def _target_ref(targets, pair: dict, prompt: list[int], resp: list[int], n_keep: int) -> TargetRef:

    eid = str(pair.get("id"))
    where = str(getattr(targets, "path", "teacher signal"))
    if eid not in targets:
        raise UserError(
            f"pair '{eid}' has no teacher signal here (it was captured from other pairs; rerun potstill capture)", where
        )
    n = targets.length(eid)
    if n != len(resp):
        raise UserError(
            f"pair '{eid}': the teacher signal has {n} positions for {len(resp)} response tokens "
            "(captured from other generations; rerun potstill capture)",
            where,
        )
    h = targets.sequence_hash(eid)
    if h is not None and h != sequence_hash(prompt, resp):
        raise UserError(
            f"pair '{eid}': the teacher signal was captured on other prompt/response tokens "
            "(other generations, prompt format or tokenizer; rerun potstill capture)",
            where,
        )
    return TargetRef(targets, eid, n_keep)


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


def _fit(prompt: list[int], resp: list[int], max_seq_len: int) -> tuple[list[int], list[int]]:
    """Cut the response to ``max_seq_len - 1`` tokens, then the prompt from the left to fit."""
    resp = resp[: max_seq_len - 1]
    return prompt[-(max_seq_len - len(resp)) :], resp


def build_features(
    pairs: list[dict],
    tokenizer,
    max_seq_len: int,
    reuse_teacher_ids: bool,
    topk: bool = False,
    targets=None,
    teacher_tokenizer=None,
) -> list[dict]:
    """Tokenize pairs into training features (prompt masked out of the labels).

    Sequences longer than ``max_seq_len`` lose prompt tokens from the left; at least one prompt
    token is kept (so ``labels[0]`` is always -100 and every response token is a prediction target),
    and a response that still does not fit is cut on the right. Pairs with no response token are
    dropped (logged).

    ``targets``: a sparse teacher-target source (a :class:`~potstill.signals.store.SignalStore`
    opened with :func:`open_signal_store`, or :class:`~potstill.signals.adapters.TopLogprobsTargets`);
    each feature then gets a lazy ``target_ref`` (rows are read at collate time). Every pair must
    be in the source with one row per response token, and a store's sequence hash must match the
    pair's prompt + response ids (else UserError: the store is from other data).

    ``teacher_tokenizer`` (cross-tokenizer KD): each feature also gets the teacher's view of the
    same pair, ``t_input_ids`` / ``t_labels`` (the teacher's own response ids, prompt through the
    teacher's chat template, cut the same way).
    """
    feats, dropped = [], 0
    vocab = len(tokenizer)
    for pair in pairs:
        prompt, full_resp = pair_ids(tokenizer, pair, reuse_teacher_ids)
        full_prompt, n_full = prompt, len(full_resp)
        prompt, resp = _fit(prompt, full_resp, max_seq_len)
        if not resp:
            dropped += 1
            continue
        feat = {"input_ids": prompt + resp, "labels": [IGNORE_INDEX] * len(prompt) + resp}
        if topk:
            ids, lps = _topk_rows(pair, n_full, vocab)
            feat["topk_ids"], feat["topk_logprobs"] = ids[: len(resp)], lps[: len(resp)]
        if targets is not None:
            feat["target_ref"] = _target_ref(targets, pair, full_prompt, full_resp, len(resp))
        if teacher_tokenizer is not None:
            t_prompt, t_resp = _fit(*pair_ids(teacher_tokenizer, pair, True), max_seq_len)
            feat["t_input_ids"], feat["t_labels"] = t_prompt + t_resp, [IGNORE_INDEX] * len(t_prompt) + t_resp
        feats.append(feat)
    if dropped:
        log.warning("dropped %d pair(s) with an empty response", dropped)
    if not feats:
        raise UserError("no training pairs with a non-empty response")
    return feats


class Collator:
    """Right-pads features into tensors: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``
    and, for top-k features, ``topk_ids`` / ``topk_logprobs`` ``[B, L, k]`` aligned with ``labels``
    (row ``t`` is the teacher's top-k for the token at position ``t``; padding: id 0, log-prob -inf);
    for sparse-target features (``target_ref`` or ``target_ids``/``target_probs``),
    ``target_ids`` int64 / ``target_probs`` float32 ``[B, L, k]`` aligned the same way (``k`` the
    widest row in the batch; padding and non-response positions: id 0, probability 0). A dense
    store's rows (every row's ids ``arange(V)``) give ``target_probs`` ``[B, L, V]`` alone, with
    no ``target_ids``: column ``j`` is token ``j``.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, teacher_pad_id: int | None = None):
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.teacher_pad_id = pad_token_id if teacher_pad_id is None else teacher_pad_id

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
        if "t_input_ids" in feats[0]:  # the teacher's tokenization of the same pairs (cross-tokenizer KD)
            tn = max(len(f["t_input_ids"]) for f in feats)
            batch["t_input_ids"] = torch.full((b, tn), self.teacher_pad_id, dtype=torch.long)
            batch["t_attention_mask"] = torch.zeros((b, tn), dtype=torch.long)
            batch["t_labels"] = torch.full((b, tn), IGNORE_INDEX, dtype=torch.long)
            for i, f in enumerate(feats):
                m = len(f["t_input_ids"])
                batch["t_input_ids"][i, :m] = torch.tensor(f["t_input_ids"])
                batch["t_attention_mask"][i, :m] = 1
                batch["t_labels"][i, :m] = torch.tensor(f["t_labels"])
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
        if "target_ref" in feats[0] or "target_ids" in feats[0]:
            tid, batch["target_probs"] = self._targets(feats, n)
            if tid is not None:
                batch["target_ids"] = tid
        return batch

    @staticmethod
    def _targets(feats: list[dict], n: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        rows = []
        for f in feats:
            if "target_ref" in f:
                rows.append(f["target_ref"].load())
            else:
                rows.append(
                    (np.asarray(f["target_ids"], dtype=np.int64), np.asarray(f["target_probs"], dtype=np.float32))
                )
        b = len(feats)
        k = max([ids.shape[1] for ids, _ in rows if ids.ndim == 2 and ids.shape[0]] or [1])
        full = [ids for ids, _ in rows if ids.ndim == 2 and ids.shape[0]]
        dense = bool(full) and all(ids.strides[0] == 0 and ids.shape[1] == k for ids in full)
        tid = None if dense else torch.zeros((b, n, k), dtype=torch.long)
        tpr = torch.zeros((b, n, k), dtype=torch.float32)
        for i, (f, (ids, probs)) in enumerate(zip(feats, rows)):
            m = ids.shape[0]
            if not m:
                continue
            start, w = len(f["input_ids"]) - m, ids.shape[1]
            if not dense:
                tid[i, start : start + m, :w] = torch.from_numpy(np.ascontiguousarray(ids))
            tpr[i, start : start + m, :w] = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
        return tid, tpr
