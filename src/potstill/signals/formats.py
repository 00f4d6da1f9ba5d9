"""Teacher distributions -> the compact per-position rows of a signal store, and back.

Three formats (``T`` is the capture temperature; every row is the teacher's distribution
``p = softmax(z / T)`` at one response position):

``dense``
    ``probs`` float16 ``[P, V]``: the whole distribution (2 V bytes per token: small vocabularies).
``topk``
    ``ids`` ``[P, k]`` packed little-endian ints of ``ceil(bits(V) / 8)`` bytes (3 at V=128256),
    ``logprobs`` float16 ``[P, k]`` (``log p`` of those ids, descending) and ``tail`` float16
    ``[P]`` (``1 - sum`` of the k probabilities: the mass left out).
``sampled``
    ``N`` draws per position from ``p``, kept as the distinct ids and how often each was drawn:
    ``nuniq`` uint8 ``[P]`` (distinct ids at the position, ``1..N``) and ``entries`` ``[E, w]``
    (one per distinct id, positions in order, ids ascending within a position), each the
    little-endian ``w``-byte int ``id | (count - 1) << bits(V)``; at V=128256 and ``N <= 128``
    that is 3 bytes an entry. The target ``count / N`` is an *unbiased* estimate of ``p``
    (``E[count_i] = N p_i``), so the sparse cross-entropy's gradient is unbiased too.

Sampling schemes for ``sampled`` (both unbiased; recorded in the manifest):

``systematic`` (default)
    One uniform ``u`` per position and the ``N`` points ``(u + j) / N`` on the CDF: token ``i``
    is drawn ``floor(N p_i)`` or ``ceil(N p_i)`` times, so the head of the distribution is
    almost exact and only tokens with ``p_i < 1/N`` are left to chance (each is kept with
    probability ``N p_i``). Far lower variance than i.i.d. draws for the same bytes
    (``benchmarks/signal_store.py``).
``multinomial``
    ``N`` i.i.d. draws (the textbook estimator; what "N samples per position" usually means).
"""

from __future__ import annotations

import math

import numpy as np
import torch

FORMATS = ("dense", "topk", "sampled")
SAMPLING = ("systematic", "multinomial")
MAX_DRAWS = 255  # nuniq is a uint8


def id_bits(vocab_size: int) -> int:
    """Bits needed for a token id below ``vocab_size``."""
    return max(1, int(vocab_size - 1).bit_length())


def id_bytes(vocab_size: int) -> int:
    """Bytes of a packed top-k id (3 at V=128256)."""
    return math.ceil(id_bits(vocab_size) / 8)


def count_bits(draws: int) -> int:
    """Bits that hold ``count - 1`` for counts ``1..draws``."""
    return int(draws - 1).bit_length()


def entry_bytes(vocab_size: int, draws: int) -> int:
    """Bytes of one sampled entry (``id | (count - 1) << bits(V)``): 3 at V=128256 with N <= 128."""
    return math.ceil((id_bits(vocab_size) + count_bits(draws)) / 8)


def pack(values: np.ndarray, nbytes: int) -> np.ndarray:
    """Non-negative ints ``[...]`` -> ``[..., nbytes]`` uint8, little-endian."""
    v = np.ascontiguousarray(values, dtype="<u8")
    return v.view(np.uint8).reshape(*v.shape, 8)[..., :nbytes].copy()


def unpack(arr: np.ndarray) -> np.ndarray:
    """``[..., nbytes]`` uint8 little-endian -> int64 ``[...]`` (inverse of :func:`pack`)."""
    arr = np.asarray(arr)
    out = np.zeros(arr.shape[:-1], dtype=np.int64)
    for b in range(arr.shape[-1]):
        out |= arr[..., b].astype(np.int64) << (8 * b)
    return out


# ----------------------------------------------------------------------------------------------
# Encoding (capture side): teacher logits of one example -> arrays


def _uniforms(rng: np.random.Generator, n: int, draws: int, sampling: str) -> np.ndarray:
    """The CDF points ``[n, draws]`` in [0, 1), ascending along each row."""
    if sampling == "systematic":
        return (rng.random((n, 1)) + np.arange(draws)) / draws
    if sampling == "multinomial":
        return np.sort(rng.random((n, draws)), axis=1)
    raise ValueError(f"unknown sampling '{sampling}' (expected one of {SAMPLING})")


def draw_counts(
    probs: torch.Tensor, draws: int, points: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw token ids at the CDF ``points`` and run-length encode them.

    Args:
        probs: ``[n, V]`` probabilities (rows sum to ~1; float64 recommended for the CDF).
        draws: ``N`` (columns of ``points``).
        points: ``[n, N]`` ascending points in [0, 1) (:func:`_uniforms`).
    Returns:
        ``(nuniq [n] int64, ids [E] int64, counts [E] int64)``: per position the number of
        distinct ids, then the distinct ids (ascending within a position) and their counts.
    """
    n, v = probs.shape
    cdf = probs.double().cumsum(-1)
    pts = torch.as_tensor(points, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    # token i covers [cdf[i-1], cdf[i]); right=True skips zero-probability tokens.
    idx = torch.searchsorted(cdf, pts.contiguous(), right=True).clamp_(max=v - 1)
    new = torch.ones_like(idx, dtype=torch.bool)
    new[:, 1:] = idx[:, 1:] != idx[:, :-1]
    nuniq = new.sum(1)
    starts = new.reshape(-1).nonzero().squeeze(1)
    ids = idx.reshape(-1)[starts]
    ends = torch.cat([starts[1:], starts.new_tensor([n * draws])])
    counts = ends - starts
    return nuniq.cpu().numpy(), ids.cpu().numpy(), counts.cpu().numpy()


def encode_rows(
    fmt: str,
    logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    k: int | None = None,
    draws: int | None = None,
    sampling: str = "systematic",
    rng: np.random.Generator | None = None,
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """One example's teacher logits ``[n, V]`` (response positions) -> the format's arrays.

    Returns ``{"probs"}`` (dense), ``{"ids", "logprobs", "tail"}`` (topk; ids unpacked int64)
    or ``{"nuniq", "ids", "counts"}`` (sampled; unpacked). :func:`pack_rows` packs them.
    """
    n, v = logits.shape
    parts: list[dict[str, np.ndarray]] = []
    for s in range(0, max(n, 1), chunk):
        z = logits[s : s + chunk].float() / temperature
        if z.shape[0] == 0:
            break
        if fmt == "dense":
            parts.append({"probs": torch.softmax(z, -1).to(torch.float16).cpu().numpy()})
        elif fmt == "topk":
            lp = torch.log_softmax(z, -1)
            vals, ids = lp.topk(int(k), dim=-1)
            tail = (1.0 - vals.double().exp().sum(-1)).clamp(0.0, 1.0)
            parts.append(
                {
                    "ids": ids.cpu().numpy().astype(np.int64),
                    "logprobs": vals.to(torch.float16).cpu().numpy(),
                    "tail": tail.to(torch.float16).cpu().numpy(),
                }
            )
        elif fmt == "sampled":
            p = torch.softmax(z.double(), -1)
            nu, ids, counts = draw_counts(p, int(draws), _uniforms(rng, z.shape[0], int(draws), sampling))
            parts.append({"nuniq": nu, "ids": ids, "counts": counts})
        else:
            raise ValueError(f"unknown signal format '{fmt}' (expected one of {FORMATS})")
    if not parts:
        return empty_rows(fmt, v, k)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def empty_rows(fmt: str, vocab_size: int, k: int | None) -> dict[str, np.ndarray]:
    if fmt == "dense":
        return {"probs": np.zeros((0, vocab_size), np.float16)}
    if fmt == "topk":
        return {
            "ids": np.zeros((0, k), np.int64),
            "logprobs": np.zeros((0, k), np.float16),
            "tail": np.zeros((0,), np.float16),
        }
    return {"nuniq": np.zeros(0, np.int64), "ids": np.zeros(0, np.int64), "counts": np.zeros(0, np.int64)}


def pack_rows(
    fmt: str, rows: dict[str, np.ndarray], vocab_size: int, draws: int | None = None
) -> dict[str, np.ndarray]:
    """Unpacked rows (:func:`encode_rows`) -> the arrays written to a shard (see the module doc)."""
    if fmt == "dense":
        return {"probs": rows["probs"].astype(np.float16)}
    if fmt == "topk":
        return {
            "ids": pack(rows["ids"], id_bytes(vocab_size)),
            "logprobs": rows["logprobs"].astype(np.float16),
            "tail": rows["tail"].astype(np.float16),
        }
    vals = rows["ids"].astype(np.int64) | ((rows["counts"].astype(np.int64) - 1) << id_bits(vocab_size))
    return {"nuniq": rows["nuniq"].astype(np.uint8), "entries": pack(vals, entry_bytes(vocab_size, draws))}


# ----------------------------------------------------------------------------------------------
# Shard arrays: names, dtypes and per-position widths


def array_specs(
    fmt: str, vocab_size: int, k: int | None = None, draws: int | None = None
) -> dict[str, tuple[str, tuple]]:
    """``{array: (dtype, trailing shape)}``; the leading dim is positions (``entries``: entries)."""
    if fmt == "dense":
        return {"probs": ("float16", (vocab_size,))}
    if fmt == "topk":
        return {"ids": ("uint8", (k, id_bytes(vocab_size))), "logprobs": ("float16", (k,)), "tail": ("float16", ())}
    if fmt == "sampled":
        return {"nuniq": ("uint8", ()), "entries": ("uint8", (entry_bytes(vocab_size, draws),))}
    raise ValueError(f"unknown signal format '{fmt}' (expected one of {FORMATS})")


def bytes_per_position_estimate(fmt: str, vocab_size: int, k: int | None = None, draws: int | None = None) -> float:
    """Rough shard bytes per position (for sizing shards; sampled assumes ~12 distinct ids)."""
    if fmt == "dense":
        return 2.0 * vocab_size
    if fmt == "topk":
        return k * (id_bytes(vocab_size) + 2) + 2
    return 1 + entry_bytes(vocab_size, draws) * min(draws, 12)
