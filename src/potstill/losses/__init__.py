"""Distillation losses (per-token, mask-aware); see :mod:`potstill.losses.divergence`."""

from .divergence import IGNORE_INDEX, cross_entropy, distillation_loss, forward_kl, sparse_forward_kl

__all__ = ["IGNORE_INDEX", "cross_entropy", "distillation_loss", "forward_kl", "sparse_forward_kl"]
