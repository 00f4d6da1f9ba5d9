"""The expand stage: grow a small set of training prompts before distilling (train split only).

Rule-based perturbations (nlpaug typos, character swaps, word dropout; casing and punctuation),
conversational wrappers and multi-question composition from configurable phrase lists, and
writer-model rewrites (paraphrase / Evol-Instruct-style), cached and resumable like teacher answers.
Expansions are deduplicated and kept out of the evaluation splits. See :func:`run_expand`.
"""

from .config import ExpandConfig, hashed_expand_config
from .rewrites import export_rewrites, read_cache_file
from .run import run_expand
from .writer import WriterRunner, make_writer_runner, writer_identity

__all__ = ["ExpandConfig", "WriterRunner", "export_rewrites", "hashed_expand_config", "make_writer_runner",
           "read_cache_file", "run_expand", "writer_identity"]
