"""Per-row decoding control for one batched ``model.generate`` call.

Every request in a batch is a :class:`Row` with its own token limit, temperature, top-p, seed,
stop strings and top-logprobs k. ``generate`` runs greedily with one extra logits processor,
:class:`RowController`, placed after the model's own processors: at each step it records the
log-softmax of the scores it receives (for models without default processors these are the raw
logits, i.e. the untempered distribution, as :class:`potstill.teachers.hf.LocalGenerator` records),
picks each row's token (argmax, or a sample at the row's temperature/top-p with the row's seed)
and returns scores that make ``generate`` take exactly that token. :class:`RowsDone` ends rows
at their own limit or stop string, and ``generate`` ends when every row has.

Streaming rows get incremental ``{"text", "entries"}`` events from the generating thread through
``Row.on_event``; text that might be the start of a stop string, or an incomplete UTF-8
character, is held back until it is settled.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..teachers.softlabels import byte_decoder  # one GPT-2 byte table for the server and the API client

Entry = tuple  # (token_id, logprob, [(token_id, logprob), ...])
MIN_TEMPERATURE = 1e-6  # sampling below this temperature picks the most likely token


@dataclass
class Row:
    """One completion being decoded; the result fields are filled in by :func:`generate_rows`."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    logprobs: bool = False
    k: int = 0
    stops: list[str] = field(default_factory=list)
    seed: int | None = None
    on_event: Callable[[dict], None] | None = None
    confidence: bool = False  # record (logprob of the chosen token, entropy) per step for routing (after the batch)
    # state and results
    tokens: list[int] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    steps: list[tuple[float, float]] = field(default_factory=list)
    prefix_len: list[int] = field(default_factory=list)
    text: str | None = None
    finish: str | None = None
    kept: int = 0
    emitted_text: str = ""
    emitted_entries: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def token_ids(self) -> list[int]:
        """The completion's ids (up to the stop string; with the end-of-sequence token if one ended it)."""
        return self.tokens[: self.kept]

    def kept_steps(self) -> list[tuple[float, float]]:
        """``(logprob, entropy)`` of each kept token (recorded when ``confidence`` is set)."""
        return self.steps[: self.kept]


class RowController(LogitsProcessor):
    """Records logprobs and chooses every row's next token (see the module docstring)."""

    def __init__(self, rows: list[Row], tokenizer, eos_ids: set[int]):
        self.rows, self.tok, self.eos = rows, tokenizer, eos_ids
        self.k = max([r.k for r in rows if r.logprobs] + [0])
        self.confidence = any(r.confidence for r in rows)
        self.vocab = len(tokenizer)  # embedding rows past the tokenizer are padding: never chosen, not in logprobs
        self.conf: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, full_scores: torch.FloatTensor) -> torch.FloatTensor:
        live = [i for i, r in enumerate(self.rows) if not r.done and not r.cancelled.is_set()]
        scores = full_scores[:, : self.vocab]
        want_lp = any(self.rows[i].logprobs for i in live)
        lp = torch.log_softmax(scores.float(), dim=-1) if want_lp else None
        chosen = scores.argmax(dim=-1)
        for i in live:
            r = self.rows[i]
            if r.temperature > 0:
                chosen[i] = sample(scores[i].float(), r.temperature, r.top_p, r.generator)
        if self.confidence and live:
            self.conf.append(confidence_step(scores, chosen))
        forced = torch.full_like(full_scores, float("-inf"))
        forced[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        chosen_cpu = chosen.tolist()
        if want_lp:
            picked = lp.gather(1, chosen[:, None])[:, 0].tolist()
            if self.k:
                vals, idx = lp.topk(min(self.k, lp.shape[-1]), dim=-1)
                vals, idx = vals.tolist(), idx.tolist()
        for i in live:
            r = self.rows[i]
            entry = None
            if r.logprobs:
                tops = list(zip(idx[i][: r.k], vals[i][: r.k])) if r.k else []
                entry = (chosen_cpu[i], picked[i], tops)
            advance(r, chosen_cpu[i], entry, self.tok, self.eos)
        return forced

    def settle_confidence(self) -> None:
        """Hand each confidence row its ``(logprob, entropy)`` steps (one host copy for the whole batch).

        Every row of a batch starts at step 0 and is live for a contiguous run of steps, so row
        ``i``'s ``j``-th token was chosen at step ``j``."""
        if not self.conf:
            return
        steps = torch.stack(self.conf).tolist()  # [steps, rows, 2]
        for i, r in enumerate(self.rows):
            if r.confidence:
                r.steps = [tuple(steps[j][i]) for j in range(len(r.tokens))]


def confidence_step(scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``[rows, 2]``: log-probability of each row's chosen token and the entropy (nats) of its step's
    distribution, both of the untempered scores; stays on the device (no sync per step)."""
    x = scores.float()
    lse = torch.logsumexp(x, dim=-1)
    entropy = lse - (torch.softmax(x, dim=-1) * x.clamp_min(-1e30)).sum(-1)
    return torch.stack([x.gather(1, chosen[:, None])[:, 0] - lse, entropy], dim=1)


class RowsDone(StoppingCriteria):
    """Tells ``generate`` which rows have finished (own limit, stop string, EOS or cancelled)."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        flags = [r.done or r.cancelled.is_set() for r in self.rows]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """One token from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    Below :data:`MIN_TEMPERATURE` the pick is the argmax (the limit of sampling as the temperature goes
    to 0; dividing by a temperature that rounds to 0 in float32 would give NaN probabilities)."""
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p
        drop[0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in float32)
        sp[drop] = 0.0
        return int(si[torch.multinomial(sp, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def advance(r: Row, tok: int, entry: Entry | None, tokenizer, eos: set[int]) -> None:
    """Append one token to a row, then check EOS, stop strings and the row's limit."""
    r.tokens.append(tok)
    if entry is not None:
        r.entries.append(entry)
    track_text = bool(r.stops) or r.on_event is not None
    if tok in eos:
        r.finish, r.kept = "stop", len(r.tokens)
        if track_text:
            r.prefix_len.append(r.prefix_len[-1] if r.prefix_len else 0)
    elif track_text:
        full = tokenizer.decode(r.tokens, skip_special_tokens=True)
        r.prefix_len.append(len(full))
        cut = min((j for j in (full.find(s) for s in r.stops) if j >= 0), default=-1)
        if cut >= 0:
            r.text, r.finish = full[:cut], "stop"
            r.kept = next((n + 1 for n, p in enumerate(r.prefix_len) if p >= cut), 0) if cut else 0
        elif r.on_event is not None and len(r.tokens) < r.max_tokens:
            _emit(r, full)
    if not r.done and len(r.tokens) >= r.max_tokens:
        r.finish, r.kept = "length", len(r.tokens)
    if r.done:
        finalize(r, tokenizer, eos)


def finalize(r: Row, tokenizer, eos: set[int]) -> None:
    """Settle a finished (or batch-ended) row's text; a streaming row gets its last event."""
    if not r.done:
        r.finish, r.kept = "length", len(r.tokens)
    if r.text is None:
        r.text = tokenizer.decode([t for t in r.tokens[: r.kept] if t not in eos], skip_special_tokens=True)
    if r.on_event is not None and not r.cancelled.is_set():
        rest = r.text[len(r.emitted_text) :] if r.text.startswith(r.emitted_text) else ""
        left = r.entries[r.emitted_entries : r.kept] if r.logprobs else []
        r.emitted_text += rest
        r.emitted_entries += len(left)
        r.on_event({"text": rest, "entries": left, "finish": r.finish})
        r.on_event = None  # nothing more to say


def _emit(r: Row, full: str) -> None:
    """Send the settled part of the text (and the logprob entries of tokens fully inside it)."""
    safe = len(full) - _holdback(full, r.stops)
    if not full.startswith(r.emitted_text):  # the decoder changed earlier text; settle at the end
        return
    delta = full[len(r.emitted_text) : safe] if safe > len(r.emitted_text) else ""
    n = sum(1 for p in r.prefix_len if p <= safe) if r.logprobs else 0
    new_entries = r.entries[r.emitted_entries : n]
    if delta or new_entries:
        r.emitted_text += delta
        r.emitted_entries += len(new_entries)
        r.on_event({"text": delta, "entries": new_entries})


def _holdback(text: str, stops: list[str]) -> int:
    """Chars at the end of ``text`` that may still turn into a stop string or a longer character."""
    hold = 0
    for s in stops:
        for m in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:m]):
                hold = m
                break
    tail = len(text) - len(text.rstrip("\ufffd"))
    return max(hold, tail)


@torch.inference_mode()
def generate_rows(model, tokenizer, eos_ids: set[int], rows: list[Row], device) -> None:
    """Decode all ``rows`` in one left-padded batched ``generate`` call (blocking)."""
    pad = tokenizer.pad_token_id
    width = max(len(r.prompt) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
        attention[i, width - len(r.prompt) :] = 1
        if r.seed is not None and r.temperature > 0:
            r.generator = torch.Generator(device=device).manual_seed(r.seed)
    controller = RowController(rows, tokenizer, eos_ids)
    model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max(r.max_tokens for r in rows),
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=sorted(eos_ids),
        logits_processor=LogitsProcessorList([controller]),
        stopping_criteria=StoppingCriteriaList([RowsDone(rows)]),
    )
    controller.settle_confidence()
    for r in rows:
        if r.text is None or r.on_event is not None:
            finalize(r, tokenizer, eos_ids)


class TokenText:
    """Cached display text and UTF-8 bytes of single tokens (for logprob entries)."""

    _HEX = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[int, tuple[str, list[int] | None]] = {}
        self.byte_map = byte_decoder() if _is_byte_level(tokenizer) else None

    def get(self, tid: int) -> tuple[str, list[int] | None]:
        """``(text, bytes)`` of token ``tid``."""
        hit = self.cache.get(tid)
        if hit is None:
            text = self.tok.decode([tid], skip_special_tokens=False)
            raw = self.tok.convert_ids_to_tokens(tid)
            m = self._HEX.match(raw or "")
            if m:
                data = [int(m.group(1), 16)]
            elif self.byte_map and raw and all(c in self.byte_map for c in raw) and tid not in self.tok.all_special_ids:
                data = [self.byte_map[c] for c in raw]
            else:
                data = list(text.encode("utf-8"))
            hit = self.cache[tid] = (text, data)
        return hit


def _is_byte_level(tokenizer) -> bool:
    try:
        return "ByteLevel" in json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))
    except Exception:
        return False
