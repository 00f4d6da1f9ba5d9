"""Top-k log-probs from the generate stage or an API, as the same sparse targets a store gives.

:func:`sparse_from_top_logprobs` turns one answer's per-token top-k log-probs into
``(ids [L, k] int64, probs [L, k] float32)``, exactly what :meth:`SignalStore.get
<potstill.signals.store.SignalStore.get>` returns, from any of:

* the generate stage's records: ``[[token_id, logprob], ...]`` per token;
* API records kept as text (``top_logprobs_text``): ``[[token, logprob, bytes?, token_id?], ...]``;
* OpenAI chat completions ``logprobs.content``: per token ``{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...]}`` (the alternatives are used), or just
  the ``top_logprobs`` list of each token;
* legacy completions ``logprobs.top_logprobs``: per token ``{token_string: logprob}``.

API tokens are strings; they are resolved to ids of ``tokenizer`` with the API teachers'
:class:`~potstill.teachers.softlabels.TokenMapper` (UTF-8 ``bytes`` when given, else the string;
byte-level BPE and SentencePiece vocabularies; ``token_id:N``). A token the tokenizer does not
have is a :class:`~potstill.errors.UserError` naming it and its position: the API's tokenizer is
not the student's.

:class:`TopLogprobsTargets` serves a list of pairs' ``top_logprobs`` (or ``top_logprobs_text``)
through the store's interface (``get``, ``length``, ``in``), so training code treats both alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from ..teachers.softlabels import TokenMapper


def token_mapper(tokenizer):
    """The API-token -> id resolver of ``tokenizer`` (:class:`potstill.teachers.softlabels.TokenMapper`:
    UTF-8 bytes, ``token_id:N`` strings, byte-level BPE and SentencePiece vocabularies)."""

    return TokenMapper(tokenizer)


def _alternatives(row) -> list:
    """One position's alternatives, whatever the input format."""
    if isinstance(row, dict):
        if "top_logprobs" in row:  # an OpenAI logprobs.content entry
            return list(row["top_logprobs"] or [])
        return [{"token": t, "logprob": lp} for t, lp in row.items()]  # legacy {token: logprob}
    return list(row)


def _needs_mapper(alt) -> bool:
    """True if an alternative names its token by string (not id)."""
    if isinstance(alt, dict):
        return "token" in alt or not ("id" in alt or "token_id" in alt)
    return isinstance(alt[0], str)


def _resolve(alt, mapper, where: str) -> tuple[int, float]:
    if isinstance(alt, dict):
        lp = float(alt["logprob"])
        if "id" in alt or "token_id" in alt and "token" not in alt:
            return int(alt.get("id", alt.get("token_id"))), lp
        token, raw, tid = str(alt.get("token")), alt.get("bytes"), alt.get("token_id")
    elif isinstance(alt[0], str):  # [token, logprob, bytes?, token_id?] (top_logprobs_text)
        token, lp = alt[0], float(alt[1])
        raw = alt[2] if len(alt) > 2 else None
        tid = alt[3] if len(alt) > 3 else None
    else:
        return int(alt[0]), float(alt[1])
    if mapper is None:
        raise UserError(f"{where}: top_logprobs give token strings; a tokenizer is needed to map them to ids")
    i = mapper.token_id(token, raw, tid)
    if i is None:
        raise UserError(
            f"{where}: API token {token!r} is not a token of the student's tokenizer "
            "(the API's tokenizer differs; its top_logprobs cannot be used for KD)"
        )
    return int(i), lp


def sparse_from_top_logprobs(
    rows: Sequence,
    *,
    temperature: float = 1.0,
    renormalize: bool = True,
    tokenizer=None,
    vocab_size: int | None = None,
    mapper=None,
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
        tokenizer: resolves API token strings to ids (or pass a prebuilt ``mapper`` from
            :func:`token_mapper`); and ``vocab_size`` defaults to ``len(tokenizer)``.
        where: names the record in error messages.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not renormalize and temperature != 1.0:
        raise UserError(
            f"{where}: un-renormalised top-k probabilities exist only at temperature 1 "
            f"(the tail's tempered mass is unknown); got T={temperature}"
        )
    if tokenizer is not None:
        vocab_size = vocab_size or len(tokenizer)
    per_pos: list[dict[int, float]] = []
    for t, row in enumerate(rows):
        probs: dict[int, float] = {}
        alts = _alternatives(row)
        if mapper is None and tokenizer is not None and any(_needs_mapper(a) for a in alts):
            mapper = token_mapper(tokenizer)
        lps = [_resolve(a, mapper, f"{where}, token {t}") for a in alts]
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
        self.rows = {str(p["id"]): p.get("top_logprobs") or p.get("top_logprobs_text") for p in pairs}
        self.temperature, self.renormalize = temperature, renormalize
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self._tokenizer = tokenizer
        self._mapper = None
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
        if (
            self._mapper is None
            and self._tokenizer is not None
            and any(_needs_mapper(a) for a in _alternatives(rows[0]))
        ):
            self._mapper = token_mapper(self._tokenizer)
        return sparse_from_top_logprobs(
            rows,
            temperature=self.temperature,
            renormalize=self.renormalize,
            vocab_size=self.vocab_size,
            mapper=self._mapper,
            where=f"pair '{example_id}' top_logprobs",
        )
