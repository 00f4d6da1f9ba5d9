"""Top-k log-probs from the generate stage or an API, as the same sparse targets a store gives.

:func:`sparse_from_top_logprobs` turns one answer's per-token top-k log-probs into
``(ids [L, k] int64, probs [L, k] float32)``, exactly what :meth:`SignalStore.get
<potstill.signals.store.SignalStore.get>` returns, from any of:

* the generate stage's records: ``[[token_id, logprob], ...]`` per token;
* OpenAI chat completions ``logprobs.content``: per token ``{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...]}`` (the alternatives are used), or just
  the ``top_logprobs`` list of each token;
* legacy completions ``logprobs.top_logprobs``: per token ``{token_string: logprob}``.

API tokens are strings; they are resolved to ids of ``tokenizer`` through their UTF-8 bytes
(``bytes`` when the API gives it, else the string encoded): byte-level BPE vocabularies
(GPT-2, Llama 3, Qwen...) and SentencePiece ones (``▁`` for a space, ``<0xNN>`` byte tokens) are
understood. A token the tokenizer does not have is a :class:`~potstill.errors.UserError` naming
it and its position: the API's tokenizer is not the student's.

:class:`TopLogprobsTargets` serves a list of pairs' ``top_logprobs`` through the store's
interface (``get``, ``length``, ``in``), so training code treats both alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _decoder_type(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        dec = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - any odd backend: fall back to the heuristics
        return None
    if dec.get("type") == "Sequence":
        types = [d.get("type") for d in dec.get("decoders", [])]
        return "ByteLevel" if "ByteLevel" in types else ("ByteFallback" if "ByteFallback" in types else "Sequence")
    return dec.get("type")


def token_bytes_table(tokenizer) -> dict[bytes, int]:
    """``{utf-8 bytes of a token: its id}`` for every token of ``tokenizer`` (lowest id wins)."""
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    byte_level = _decoder_type(tokenizer) == "ByteLevel"
    if not byte_level and _decoder_type(tokenizer) is None:
        byte_level = any(t.startswith("Ġ") for t in vocab)
    decode = {c: b for b, c in _bytes_to_unicode().items()}
    table: dict[bytes, int] = {}
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if tok in specials:
            raw = tok.encode("utf-8")
        elif byte_level and all(c in decode for c in tok):
            raw = bytes(decode[c] for c in tok)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                raw = bytes([int(tok[3:5], 16)])
            except ValueError:
                raw = tok.encode("utf-8")
        else:
            raw = tok.replace("▁", " ").encode("utf-8")
        table.setdefault(raw, int(i))
    return table


def _alternatives(row) -> list:
    """One position's alternatives, whatever the input format."""
    if isinstance(row, dict):
        if "top_logprobs" in row:  # an OpenAI logprobs.content entry
            return list(row["top_logprobs"] or [])
        return [{"token": t, "logprob": lp} for t, lp in row.items()]  # legacy {token: logprob}
    return list(row)


def _needs_table(alt) -> bool:
    """True if an alternative names its token by string (not id)."""
    if isinstance(alt, dict):
        return not ("id" in alt or "token_id" in alt)
    return isinstance(alt[0], str)


def _resolve(alt, table: dict[bytes, int] | None, where: str) -> tuple[int, float]:
    if isinstance(alt, dict):
        lp = float(alt["logprob"])
        if "id" in alt or "token_id" in alt:
            return int(alt.get("id", alt.get("token_id"))), lp
        if table is None:
            raise UserError(f"{where}: API top_logprobs give token strings; a tokenizer is needed to map them to ids")
        raw = bytes(alt["bytes"]) if alt.get("bytes") is not None else str(alt["token"]).encode("utf-8")
        if raw not in table:
            raise UserError(f"{where}: API token {alt.get('token')!r} is not a token of the student's tokenizer "
                            "(the API's tokenizer differs; its top_logprobs cannot be used for KD)")
        return table[raw], lp
    tid, lp = alt
    if isinstance(tid, str):
        if table is None:
            raise UserError(f"{where}: top_logprobs give token strings; a tokenizer is needed to map them to ids")
        raw = tid.encode("utf-8")
        if raw not in table:
            raise UserError(f"{where}: token {tid!r} is not a token of the student's tokenizer")
        return table[raw], float(lp)
    return int(tid), float(lp)


def sparse_from_top_logprobs(
    rows: Sequence,
    *,
    temperature: float = 1.0,
    renormalize: bool = True,
    tokenizer=None,
    vocab_size: int | None = None,
    table: dict[bytes, int] | None = None,
    where: str = "top_logprobs",
) -> tuple[np.ndarray, np.ndarray]:
    """One answer's per-token top-k log-probs -> ``(ids [L, k] int64, probs [L, k] float32)``.

    The log-probs are the teacher's at T=1 (what the generate stage and APIs return). With
    ``renormalize`` (default, as the existing top-k KD) ``probs = softmax(logprob / T)`` over the
    position's ids, rows summing to 1; otherwise ``probs = exp(logprob)``, the teacher's own
    probabilities summing to less than 1 (only defined at ``T = 1``). Positions with fewer ids are
    padded with id 0 / probability 0; an id that appears twice in a position has its
    probabilities added.

    Args:
        rows: one entry per answer token, in any format of the module doc.
        tokenizer: resolves API token strings to ids (or pass a prebuilt ``table`` from
            :func:`token_bytes_table`); and ``vocab_size`` defaults to ``len(tokenizer)``.
        where: names the record in error messages.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not renormalize and temperature != 1.0:
        raise UserError(f"{where}: un-renormalised top-k probabilities exist only at temperature 1 "
                        f"(the tail's tempered mass is unknown); got T={temperature}")
    if tokenizer is not None:
        vocab_size = vocab_size or len(tokenizer)
    per_pos: list[dict[int, float]] = []
    for t, row in enumerate(rows):
        probs: dict[int, float] = {}
        alts = _alternatives(row)
        if table is None and tokenizer is not None and any(_needs_table(a) for a in alts):
            table = token_bytes_table(tokenizer)
        lps = [_resolve(a, table, f"{where}, token {t}") for a in alts]
        finite = [(i, lp) for i, lp in lps if math.isfinite(lp)]
        if vocab_size is not None and any(not 0 <= i < vocab_size for i, _ in finite):
            bad = next(i for i, _ in finite if not 0 <= i < vocab_size)
            raise UserError(f"{where}, token {t}: token id {bad} outside the vocabulary ({vocab_size})")
        if renormalize and finite:
            top = max(lp for _, lp in finite) / temperature
            ws = [(i, math.exp(lp / temperature - top)) for i, lp in finite]
            z = sum(w for _, w in ws)
            for i, w in ws:
                probs[i] = probs.get(i, 0.0) + w / z
        else:
            for i, lp in finite:
                probs[i] = probs.get(i, 0.0) + math.exp(lp)
        per_pos.append(probs)
    k = max((len(p) for p in per_pos), default=0)
    ids = np.zeros((len(per_pos), k), np.int64)
    out = np.zeros((len(per_pos), k), np.float32)
    for t, p in enumerate(per_pos):
        for j, (i, w) in enumerate(p.items()):
            ids[t, j], out[t, j] = i, w
    return ids, out


class TopLogprobsTargets:
    """Pairs' ``top_logprobs`` served like a :class:`~potstill.signals.store.SignalStore`.

    Args:
        pairs: training pairs (``id``, ``top_logprobs``).
        temperature, renormalize, tokenizer: as :func:`sparse_from_top_logprobs`.
    """

    def __init__(self, pairs: list[dict], temperature: float = 1.0, renormalize: bool = True, tokenizer=None):
        self.rows = {str(p["id"]): p.get("top_logprobs") for p in pairs}
        self.temperature, self.renormalize = temperature, renormalize
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self._tokenizer = tokenizer
        self._table = None
        self.path = "top_logprobs"

    def __contains__(self, example_id) -> bool:
        return bool(self.rows.get(str(example_id)))

    def __len__(self) -> int:
        return sum(1 for r in self.rows.values() if r)

    def length(self, example_id) -> int:
        rows = self.rows.get(str(example_id))
        if not rows:
            raise UserError(f"pair '{example_id}' has no top_logprobs; rerun generate with teacher.top_logprobs > 0")
        return len(rows)

    def sequence_hash(self, example_id) -> None:
        return None

    def get(self, example_id) -> tuple[np.ndarray, np.ndarray]:
        self.length(example_id)
        rows = self.rows[str(example_id)]
        if self._table is None and self._tokenizer is not None and any(_needs_table(a) for a in _alternatives(rows[0])):
            self._table = token_bytes_table(self._tokenizer)
        return sparse_from_top_logprobs(
            rows, temperature=self.temperature, renormalize=self.renormalize,
            vocab_size=self.vocab_size, table=self._table, where=f"pair '{example_id}' top_logprobs",
        )
