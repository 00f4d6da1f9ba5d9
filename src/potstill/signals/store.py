"""The signal store: a directory of sharded, memory-mapped teacher distributions.

Layout::

    manifest.json                  provenance, settings, the shard list and the example index
    shard-00000.<array>.npy        one numpy array per file (see :mod:`potstill.signals.formats`)

(While a capture runs, each finished shard also has a ``shard-00000.json`` record, for resuming;
the manifest, written last, takes them over.)

``manifest.json`` holds: ``format``, ``k`` (top-k), ``draws`` and ``sampling`` (sampled),
``temperature``, ``vocab_size``, ``teacher`` (path, model hash, dtype), ``tokenizer``
(:func:`potstill.models.tokenizer_fingerprint`, chat-template sha256, path), ``created``,
``seed``, totals, and ``shards``: for each shard its ``positions``, ``entries`` (sampled), every
file's ``bytes``, ``sha256``, ``dtype`` and ``shape``, and its ``index``: one
``[example_id, positions, entries, sequence_hash]`` per example, in order (offsets are the
running sums). Row ``t`` of an example is the teacher's distribution over response token ``t``
given the prompt and response tokens before it; ``sequence_hash`` (:func:`sequence_hash`) pins
the exact prompt + response token ids it was computed on.

Integrity -- a damaged store is a :class:`~potstill.errors.UserError` naming the shard file,
never a silently wrong loss:

* on open: every file must exist with exactly the manifest's byte size (a truncated shard is
  reported as such), parse as ``.npy`` with the manifest's dtype and shape, and the index must add
  up to the shard's rows;
* sha256 of every shard file against the manifest (``verify``): ``"lazy"`` (default) hashes a
  shard the first time one of its rows is read -- one sequential read of the shard (~1-2 GB/s;
  the pages then sit in the cache the memory map reads from); ``"open"`` hashes all shards when
  the store is opened; ``"off"`` skips hashing;
* every row read is checked for consistency (ids below the vocabulary; sampled: 1 to N distinct
  ids whose counts add up to exactly N at every position; top-k: finite log-probs <= 0 and a tail
  in [0, 1] that with the k probabilities adds up to 1; dense: rows that add up to 1). These
  catch most damage even with ``verify="off"``; the hash catches the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np

from .. import __version__
from ..errors import UserError
from ..io import atomic_path, read_json, sha256_file, write_json
from ..models import tokenizer_fingerprint
from . import formats as F

STORE_VERSION = 1
MANIFEST = "manifest.json"
Verify = Literal["lazy", "open", "off"]
TopkTail = Literal["renormalize", "drop"]


def sequence_hash(prompt_ids, response_ids) -> str:
    """16 hex digits pinning the exact prompt and response token ids of an example."""
    payload = json.dumps([[int(i) for i in prompt_ids], [int(i) for i in response_ids]], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


# ----------------------------------------------------------------------------------------------
# Writing


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def write_shard(
    directory: str | os.PathLike,
    index: int,
    fmt: str,
    examples: list[tuple[str, dict[str, np.ndarray], str | None]],
    vocab_size: int,
    *,
    k: int | None = None,
    draws: int | None = None,
    key: str | None = None,
) -> dict:
    """Write one shard: ``examples`` is ``[(example_id, rows, sequence_hash)]`` with ``rows`` from
    :func:`~potstill.signals.formats.encode_rows`. Each array is written atomically; the shard's
    record ``shard-NNNNN.json`` (returned) is written last, so a shard without it is unfinished.
    ``key`` (the capture settings hash) is kept in the record for resuming.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    packed = [F.pack_rows(fmt, rows, vocab_size, draws) for _, rows, _ in examples]
    specs = F.array_specs(fmt, vocab_size, k, draws)
    record: dict = {"name": name, "positions": 0, "files": {}, "index": []}
    if fmt == "sampled":
        record["entries"] = 0
    for eid, rows, h in examples:
        n = int(len(rows["nuniq"]) if fmt == "sampled" else len(rows[next(iter(rows))]))
        m = int(len(rows["ids"])) if fmt == "sampled" else 0
        record["index"].append([eid, n, m, h])
        record["positions"] += n
        if fmt == "sampled":
            record["entries"] += m
    for arr_name, (dtype, tail_shape) in specs.items():
        parts = [p[arr_name] for p in packed]
        arr = np.concatenate(parts) if parts else np.zeros((0, *tail_shape), dtype)
        arr = arr.astype(dtype, copy=False).reshape(-1, *tail_shape)
        fname = f"{name}.{arr_name}.npy"
        _save_npy(directory / fname, arr)
        record["files"][arr_name] = {
            "file": fname,
            "bytes": (directory / fname).stat().st_size,
            "sha256": sha256_file(directory / fname),
            "dtype": dtype,
            "shape": list(arr.shape),
        }
    if key is not None:
        record["key"] = key
    write_json(directory / f"{name}.json", record)
    return record


def shard_record_ok(directory: Path, record: dict) -> bool:
    """True if every file of a finished shard is present with its recorded size and sha256."""
    try:
        for spec in record["files"].values():
            p = Path(directory) / spec["file"]
            if not p.is_file() or p.stat().st_size != spec["bytes"] or sha256_file(p) != spec["sha256"]:
                return False
    except (KeyError, TypeError, OSError):
        return False
    return True


def write_manifest(directory: str | os.PathLike, settings: dict, shards: list[dict], provenance: dict) -> dict:
    """Write ``manifest.json`` (last: a store without it is incomplete) and return it."""
    directory = Path(directory)
    shards = [{k: v for k, v in s.items() if k != "key"} for s in shards]
    positions = sum(s["positions"] for s in shards)
    nbytes = sum(f["bytes"] for s in shards for f in s["files"].values())
    manifest = {
        "potstill_signals": STORE_VERSION,
        **settings,
        **provenance,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "potstill_version": __version__,
        "examples": sum(len(s["index"]) for s in shards),
        "positions": positions,
        "shard_bytes": nbytes,
        "bytes_per_token": round(nbytes / positions, 3) if positions else None,
        "shards": shards,
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# Reading


class SignalStore:
    """A signal store opened for reading: ``get(example_id) -> (ids [L, k], probs [L, k])``.

    Shard arrays are memory-mapped (``np.load(mmap_mode="r")``): only the rows of the examples
    read are paged in, so a store far larger than RAM streams during training.

    Args:
        path: the store directory (with ``manifest.json``).
        verify: when to check shard sha256s: ``"lazy"`` (first read of each shard), ``"open"``
            or ``"off"`` (see the module doc for the cost).
    """

    def __init__(self, path: str | os.PathLike, verify: Verify = "lazy"):
        if verify not in ("lazy", "open", "off"):
            raise ValueError(f"verify must be 'lazy', 'open' or 'off', not {verify!r}")
        self.path = Path(path)
        self.verify = verify
        if not self.path.is_dir():
            raise UserError("signal store not found (run `potstill capture CONFIG` first)", str(self.path))
        mf = self.path / MANIFEST
        if not mf.is_file():
            partial = any(self.path.glob("shard-*.npy"))
            raise UserError(
                "incomplete signal store: no manifest.json (the capture did not finish; rerun potstill capture)"
                if partial
                else "not a signal store (no manifest.json)",
                str(self.path),
            )
        self.manifest = read_json(mf)
        m = self.manifest
        if not isinstance(m, dict) or m.get("potstill_signals") != STORE_VERSION:
            raise UserError(f"not a potstill signal store of version {STORE_VERSION}", str(mf))
        try:
            self.format: str = m["format"]
            self.vocab_size = int(m["vocab_size"])
            self.temperature = float(m["temperature"])
            self.k = m.get("k")
            self.draws = m.get("draws")
            self._specs = F.array_specs(self.format, self.vocab_size, self.k, self.draws)
            self._index: dict[str, tuple[int, int, int, int, int, str | None]] = {}
            self._shards: list[dict] = m["shards"]
            for si, shard in enumerate(self._shards):
                self._open_shard_meta(si, shard)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"malformed signal store manifest ({type(e).__name__}: {e})", str(mf)) from None
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._verified: set[int] = set()
        self._id_mask = (1 << F.id_bits(self.vocab_size)) - 1
        for si in range(len(self._shards)):
            self._open_arrays(si)
        if verify == "open":
            for si in range(len(self._shards)):
                self._verify(si)

    # -- opening -------------------------------------------------------------------------
    def _open_shard_meta(self, si: int, shard: dict) -> None:
        if set(shard["files"]) != set(self._specs):
            raise UserError(
                f"shard {shard['name']} lists arrays {sorted(shard['files'])}, expected "
                f"{sorted(self._specs)} for format '{self.format}'",
                str(self.path / MANIFEST),
            )
        pos = ent = 0
        for eid, n, m, h in shard["index"]:
            if eid in self._index:
                raise UserError(f"example '{eid}' appears twice in the signal store", str(self.path / MANIFEST))
            self._index[str(eid)] = (si, pos, int(n), ent, int(m), h)
            pos += int(n)
            ent += int(m)
        if pos != shard["positions"] or (self.format == "sampled" and ent != shard["entries"]):
            raise UserError(
                f"the index of shard {shard['name']} does not add up to its rows", str(self.path / MANIFEST)
            )

    def _open_arrays(self, si: int) -> None:
        shard = self._shards[si]
        arrays = {}
        for arr_name, spec in shard["files"].items():
            p = self.path / spec["file"]
            if not p.is_file():
                raise UserError(f"signal store shard file is missing ({shard['name']})", str(p))
            size = p.stat().st_size
            if size != spec["bytes"]:
                what = "truncated" if size < spec["bytes"] else "the wrong size"
                raise UserError(
                    f"signal store shard {shard['name']} is {what}: {size} bytes, the manifest says "
                    f"{spec['bytes']} (recapture with potstill capture)",
                    str(p),
                )
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise UserError(
                    f"signal store shard {shard['name']} is not a readable .npy file ({e})", str(p)
                ) from None
            dtype, tail = self._specs[arr_name]
            lead = shard["entries"] if arr_name == "entries" else shard["positions"]
            if str(arr.dtype) != dtype or tuple(arr.shape) != (lead, *tail) or list(arr.shape) != spec["shape"]:
                raise UserError(
                    f"signal store shard {shard['name']} has {arr.dtype}{list(arr.shape)}, expected "
                    f"{dtype}{[lead, *tail]}",
                    str(p),
                )
            arrays[arr_name] = arr
        self._arrays[si] = arrays

    def _verify(self, si: int) -> None:
        if si in self._verified:
            return
        shard = self._shards[si]
        for spec in shard["files"].values():
            p = self.path / spec["file"]
            if sha256_file(p) != spec["sha256"]:
                raise UserError(
                    f"signal store shard {shard['name']} is corrupted: its sha256 differs from the "
                    "manifest (recapture with potstill capture)",
                    str(p),
                )
        self._verified.add(si)

    def __getstate__(self):  # picklable for DataLoader workers: memory maps are reopened
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for si in range(len(self._shards)):
            self._open_arrays(si)

    # -- metadata ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, example_id) -> bool:
        return str(example_id) in self._index

    def example_ids(self) -> list[str]:
        return list(self._index)

    def length(self, example_id) -> int:
        """Response positions stored for the example."""
        return self._entry(example_id)[2]

    def sequence_hash(self, example_id) -> str | None:
        return self._entry(example_id)[5]

    @property
    def tokenizer_fingerprint(self) -> str | None:
        return (self.manifest.get("tokenizer") or {}).get("fingerprint")

    def check_tokenizer(self, tokenizer, who: str = "student", name: str | None = None) -> None:
        """UserError unless ``tokenizer`` has the fingerprint the store was captured with."""

        fp = tokenizer_fingerprint(tokenizer)
        mine = self.manifest.get("tokenizer") or {}
        if fp != mine.get("fingerprint") or len(tokenizer) != self.vocab_size:
            theirs = name or getattr(tokenizer, "name_or_path", None) or "?"
            raise UserError(
                f"the signal store was captured with tokenizer {str(mine.get('fingerprint'))[:12]} "
                f"({mine.get('path')}, {self.vocab_size} tokens) but the {who}'s tokenizer is {fp[:12]} "
                f"({theirs}, {len(tokenizer)} tokens): their token ids mean different tokens; recapture "
                "with the student's tokenizer (potstill capture) or use train.kd.signal=live",
                str(self.path),
            )

    def _entry(self, example_id):
        try:
            return self._index[str(example_id)]
        except KeyError:
            raise UserError(
                f"example '{example_id}' is not in the signal store (it was captured from other "
                "pairs; rerun potstill capture)",
                str(self.path),
            ) from None

    # -- rows ----------------------------------------------------------------------------
    def _bad(self, si: int, arr_name: str, what: str) -> UserError:
        shard = self._shards[si]
        return UserError(
            f"signal store shard {shard['name']} is corrupted: {what} (recapture with potstill capture)",
            str(self.path / shard["files"][arr_name]["file"]),
        )

    def get(self, example_id, tail: TopkTail = "renormalize") -> tuple[np.ndarray, np.ndarray]:
        """The example's sparse teacher target: ``(ids [L, k] int64, probs [L, k] float32)``.

        Row ``t`` is the target distribution for response token ``t``; padding entries have
        id 0 and probability 0. Per format:

        * dense: ``k = V``, ``ids`` a read-only broadcast of ``arange(V)``, ``probs`` the rows;
        * topk: the k ids; ``probs`` = ``exp(logprob)`` renormalised over the k ids
          (``tail="renormalize"``, rows sum to 1: the usual top-k KD, biased) or left as the
          teacher's probabilities (``tail="drop"``: rows sum to ``1 - tail``);
        * sampled: ``k`` = the most distinct ids at any of the example's positions,
          ``probs = count / N`` (rows sum to exactly 1; unbiased for the teacher's ``p``).

        All at the store's temperature (:attr:`temperature`).
        """
        si, p0, n, e0, m, _ = self._entry(example_id)
        if self.verify == "lazy":
            self._verify(si)
        a = self._arrays[si]
        v = self.vocab_size
        if self.format == "dense":
            probs = np.asarray(a["probs"][p0 : p0 + n], dtype=np.float32)
            sums = probs.sum(-1)
            if not np.isfinite(probs).all() or (probs < 0).any() or (n and np.abs(sums - 1).max() > 0.02):
                raise self._bad(si, "probs", f"rows of example '{example_id}' are not distributions")
            return np.broadcast_to(np.arange(v, dtype=np.int64), (n, v)), probs
        if self.format == "topk":
            ids = F.unpack(a["ids"][p0 : p0 + n])
            lp = np.asarray(a["logprobs"][p0 : p0 + n], dtype=np.float32)
            tl = np.asarray(a["tail"][p0 : p0 + n], dtype=np.float32)
            if (ids >= v).any():
                raise self._bad(si, "ids", f"example '{example_id}' has token ids >= the vocabulary ({v})")
            if not np.isfinite(lp).all() or (lp > 1e-3).any():
                raise self._bad(si, "logprobs", f"example '{example_id}' has invalid log-probabilities")
            p = np.exp(lp)
            total = p.sum(-1) + tl
            if not np.isfinite(tl).all() or (tl < 0).any() or (tl > 1).any() or (n and np.abs(total - 1).max() > 0.02):
                raise self._bad(si, "tail", f"example '{example_id}': top-k mass + tail does not add up to 1")
            if tail == "renormalize":
                p = p / p.sum(-1, keepdims=True)
            elif tail != "drop":
                raise ValueError(f"tail must be 'renormalize' or 'drop', not {tail!r}")
            return ids, p.astype(np.float32)
        # sampled
        nu = np.asarray(a["nuniq"][p0 : p0 + n], dtype=np.int64)
        vals = F.unpack(a["entries"][e0 : e0 + m])
        ids = vals & self._id_mask
        counts = (vals >> F.id_bits(v)) + 1
        N = int(self.draws)
        if n == 0:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        if nu.sum() != m or nu.min() < 1 or nu.max() > N:
            raise self._bad(si, "nuniq", f"example '{example_id}' has inconsistent per-position entry counts")
        starts = np.cumsum(nu) - nu
        if (ids >= v).any() or (counts > N).any() or (np.add.reduceat(counts, starts) != N).any():
            raise self._bad(si, "entries", f"example '{example_id}' has entries that are not {N} draws per position")
        kmax = int(nu.max())
        row = np.repeat(np.arange(n), nu)
        col = np.arange(m) - np.repeat(starts, nu)
        out_ids = np.zeros((n, kmax), np.int64)
        out_p = np.zeros((n, kmax), np.float32)
        out_ids[row, col] = ids
        out_p[row, col] = counts / N
        return out_ids, out_p

    def get_tail(self, example_id) -> np.ndarray:
        """Top-k stores: the teacher mass outside the top-k at each position ``[L]`` (float32)."""
        if self.format != "topk":
            raise ValueError("only top-k stores have a tail")
        si, p0, n, *_ = self._entry(example_id)
        if self.verify == "lazy":
            self._verify(si)
        return np.asarray(self._arrays[si]["tail"][p0 : p0 + n], dtype=np.float32)

    def disk_bytes(self) -> int:
        """Bytes of every file in the store directory (shards, records and manifest)."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
