"""The prompts stage: load prompt sources, drop empty, duplicate and too-long prompts, split them."""

from .config import PromptsConfig
from .dedup import dedup, normalise
from .load import SourceSpec, drop_empty, is_empty, load_source, read_source, user_text
from .prompts import run_prompts
from .split import assign_split, drop_contaminated, make_splits, split_point

__all__ = [
    "PromptsConfig",
    "SourceSpec",
    "assign_split",
    "dedup",
    "drop_contaminated",
    "drop_empty",
    "is_empty",
    "load_source",
    "make_splits",
    "normalise",
    "read_source",
    "run_prompts",
    "split_point",
    "user_text",
]
