"""Distillation losses: one implementation shared by every trainer.

* :mod:`potstill.losses.divergence` -- per-token divergences (forward/reverse KL, generalized JSD,
  skew forward/reverse KL, TVD), cross-entropy, sparse targets and :func:`distillation_loss`, on
  full logits (the reference; autograd gradients).
* :mod:`potstill.losses.chunked` -- :func:`chunked_distillation_loss`: the same loss from final
  hidden states and lm_head weights, a chunk of tokens at a time (no ``[tokens, vocab]`` tensor),
  with exact gradients computed in the forward pass.
"""

from .chunked import DEFAULT_CHUNK_SIZE, chunked_distillation_loss, chunked_sparse_target_loss, kd_value_and_grad
from .divergence import (
    DIVERGENCES,
    IGNORE_INDEX,
    check_divergence,
    cross_entropy,
    distillation_loss,
    divergence,
    divergence_from_logits,
    fkl,
    forward_kl,
    gjsd,
    rkl,
    skew_fkl,
    skew_rkl,
    sparse_forward_kl,
    sparse_target_loss,
    topk_target_probs,
    tvd,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DIVERGENCES",
    "IGNORE_INDEX",
    "check_divergence",
    "chunked_distillation_loss",
    "chunked_sparse_target_loss",
    "cross_entropy",
    "distillation_loss",
    "divergence",
    "divergence_from_logits",
    "fkl",
    "forward_kl",
    "gjsd",
    "kd_value_and_grad",
    "rkl",
    "skew_fkl",
    "skew_rkl",
    "sparse_forward_kl",
    "sparse_target_loss",
    "topk_target_probs",
    "tvd",
]
