"""The train stage: SFT and KD students on the transformers Trainer.

Public API (imported lazily, so ``potstill.train.card`` stays light for the eval/report stages):
:func:`train_student`, :func:`write_model_card`, :func:`append_card_section`.
"""

from __future__ import annotations

from . import card
from .student import train_student

__all__ = ["append_card_section", "train_student", "write_model_card"]


def __getattr__(name: str):
    if name == "train_student":
        return train_student
    if name in ("write_model_card", "append_card_section"):
        return getattr(card, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
