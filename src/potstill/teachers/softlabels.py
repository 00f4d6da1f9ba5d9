"""API answers → generation records, with the teacher's top log-probs as token ids when possible.

APIs return log-probs as token *strings* (OpenAI adds their UTF-8 ``bytes``; vLLM can return
``token_id:N``). Given a local tokenizer that matches the API model, :class:`TokenMapper` maps
each token back to its id, so records carry ``token_ids`` and ``top_logprobs`` as
``[[token_id, logprob], ...]`` per generated token, the format KD reads. Without a tokenizer
(or when a token does not map) the record keeps ``top_logprobs_text`` as ``[[token, logprob], ...]``.
When the answer stopped on its own, the tokenizer's EOS is appended to ``token_ids`` with the
row ``[[eos_id, 0.0]]`` (APIs do not report the stop token's distribution).
"""

from __future__ import annotations

import re
from functools import lru_cache

_TOKEN_ID = re.compile(r"token_id:(\d+)")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte → printable-unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _vocab_bytes(token: str, byte_level: bool) -> bytes:
    """The text bytes a vocabulary entry stands for (byte-level BPE, SentencePiece ``▁``/``<0xNN>``, or plain)."""
    if byte_level:
        dec = byte_decoder()
        return bytes(dec[c] for c in token)
    m = _BYTE_TOKEN.fullmatch(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


class TokenMapper:
    """Maps API token strings/bytes to ids of a local tokenizer."""

    def __init__(self, tokenizer):
        vocab = tokenizer.get_vocab()
        dec = byte_decoder()
        special = set(tokenizer.all_special_ids)
        normal = [t for t, i in vocab.items() if i not in special]
        byte_level = bool(normal) and sum(all(c in dec for c in t) for t in normal) >= 0.99 * len(normal)
        self.by_bytes: dict[bytes, int] = {}
        self.bytes_of: dict[int, bytes] = {}
        self.by_str = dict(vocab)
        for tok, i in sorted(vocab.items(), key=lambda kv: (kv[1] in special, kv[1])):
            b = _vocab_bytes(tok, byte_level and all(c in dec for c in tok))
            self.bytes_of[i] = b
            self.by_bytes.setdefault(b, i)
        self.eos = tokenizer.eos_token_id

    def token_id(self, token: str, raw: list[int] | None = None, tid: int | None = None) -> int | None:
        """The id of one API token (``raw``: its UTF-8 bytes, ``tid``: the server's id, when given); None if unknown.

        A server-given id is trusted only when it is in this vocabulary with the same bytes.
        """
        if tid is not None and tid in self.bytes_of and (raw is None or self.bytes_of[tid] == bytes(raw)):
            return int(tid)
        m = _TOKEN_ID.fullmatch(token)
        if m:
            return int(m.group(1))
        if raw is not None:
            i = self.by_bytes.get(bytes(raw))
            if i is not None:
                return i
        i = self.by_bytes.get(token.encode("utf-8"))
        return i if i is not None else self.by_str.get(token)

    def map(self, logprobs: list, finish_reason: str) -> tuple[list[int], list[list[list]]] | None:
        """``(token_ids, top_logprobs)`` for one answer's API log-probs; None if a generated token is unknown."""
        ids, rows = [], []
        for token, _lp, raw, top, server_id in logprobs:
            tid = self.token_id(token, raw, server_id)
            if tid is None:
                return None
            row, seen = [], set()
            for t, lp, b, server_j in top:
                j = self.token_id(t, b, server_j)
                if j is not None and j not in seen:
                    seen.add(j)
                    row.append([j, round(float(lp), 6)])
            if not row:
                return None
            ids.append(tid)
            rows.append(row)
        if finish_reason == "stop" and self.eos is not None:
            ids.append(int(self.eos))
            rows.append([[int(self.eos), 0.0]])
        return ids, rows


def to_record(rid: str, answer: dict, mapper: TokenMapper | None) -> dict:
    """The ``generations.jsonl`` record of prompt ``rid`` from a cached API answer."""
    rec = {
        "id": rid,
        "text": answer["text"],
        "token_ids": None,
        "finish_reason": answer["finish_reason"],
        "usage": answer["usage"],
        "attempts": answer.get("attempts", 1),
        "top_logprobs": None,
    }
    lp = answer.get("logprobs")
    if lp:
        mapped = mapper.map(lp, answer["finish_reason"]) if mapper else None
        if mapped:
            rec["token_ids"], rec["top_logprobs"] = mapped
        else:
            rec["top_logprobs_text"] = [[[e[0], round(float(e[1]), 6)] for e in pos[3]] for pos in lp]
    return rec
