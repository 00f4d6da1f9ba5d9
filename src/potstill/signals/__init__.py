"""Offline teacher signals: capture the teacher's soft labels once, train without it in memory.

* :func:`capture_signals` (``potstill capture``) runs the teacher teacher-forced over the
  training pairs and writes a *signal store*: ``dense`` rows, ``topk`` (ids, log-probs and the
  tail mass) or ``sampled`` (N draws per position as distinct ids + counts, the unbiased
  estimator); see :mod:`potstill.signals.formats` for the layouts and bytes per token.
* :class:`SignalStore` reads one memory-mapped: ``get(example_id) -> (ids [L, k], probs [L, k])``,
  the generic sparse target; provenance, integrity checks and errors in
  :mod:`potstill.signals.store`.
* :func:`sparse_from_top_logprobs` / :class:`TopLogprobsTargets` give the generate stage's and
  API ``top_logprobs`` the same form.
"""

from .adapters import TopLogprobsTargets, sparse_from_top_logprobs, token_mapper
from .capture import capture_signals
from .formats import FORMATS, SAMPLING, encode_rows
from .store import SignalStore, sequence_hash, write_manifest, write_shard

__all__ = [
    "FORMATS",
    "SAMPLING",
    "SignalStore",
    "TopLogprobsTargets",
    "capture_signals",
    "encode_rows",
    "sequence_hash",
    "sparse_from_top_logprobs",
    "token_mapper",
    "write_manifest",
    "write_shard",
]
