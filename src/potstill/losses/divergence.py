"""Per-token distillation losses: cross-entropy, forward KL (dense and top-k) and their mix.

Conventions shared by every function here:

* ``B`` batch, ``L`` positions, ``V`` vocabulary, ``k`` top-k width.
* Inputs are *aligned*: ``student_logits[b, t]`` is the distribution that predicts
  ``labels[b, t]`` (the caller does the causal shift).
* ``mask`` is a bool tensor ``[B, L]``; positions where it is False contribute exactly 0.
  :func:`cross_entropy` takes ``labels`` with ``ignore_index`` instead and derives the mask.
* Functions return *per-token* tensors ``[B, L]`` (not reduced), computed in float32 at least
  (bf16/fp16 logits are upcast), so that callers can sum them and divide by whatever token count
  makes the normalisation exact (e.g. the number of response tokens in the global batch).
* A temperature ``T`` divides logits (and teacher log-probs) before the softmax; the ``T**2``
  gradient-scale correction of Hinton et al. is applied by :func:`distillation_loss`, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token negative log-likelihood of ``labels``.

    Args:
        logits: ``[B, L, V]`` student logits (aligned with ``labels``).
        labels: ``[B, L]`` target ids; ``ignore_index`` marks positions without a target.
    Returns:
        ``[B, L]``: ``-log softmax(logits)[label]``, 0 where ``labels == ignore_index``.
    """
    logits = _float(logits)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return flat.view(labels.shape)


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token ``KL(p_teacher^T || p_student^T)`` over the full vocabulary.

    ``p^T = softmax(logits / T)``. If the two vocabularies differ in size (padded embedding
    matrices), both are sliced to the smaller one before the softmax.

    Args:
        student_logits: ``[B, L, Vs]``.
        teacher_logits: ``[B, L, Vt]`` (no gradient is needed through it).
        mask: ``[B, L]`` bool; False positions return 0.
        temperature: ``T > 0``.
    Returns:
        ``[B, L]`` KL divergences in nats (>= 0), without the ``T**2`` factor.
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    log_ps = F.log_softmax(_float(student_logits[..., :v]) / temperature, dim=-1)
    log_pt = F.log_softmax(_float(teacher_logits[..., :v]).detach() / temperature, dim=-1)
    pt = log_pt.exp()
    # p_t * (log p_t - log p_s), with 0 * log 0 = 0 for teacher tokens of zero probability.
    kl = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros_like(pt)).sum(-1)
    return kl * mask.to(kl.dtype)


def sparse_forward_kl(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token forward KL against a teacher known only through its top-k log-probs.

    The teacher distribution is the top-k renormalised at temperature ``T`` over the k ids:
    ``q_i = softmax(teacher_logprobs / T)_i`` (the mass outside the top-k is dropped). The
    student keeps its full-vocabulary distribution ``p^T = softmax(student_logits / T)``, read at
    the k ids: ``KL = sum_i q_i (log q_i - log p^T[id_i])``. This is >= 0 (the student's mass on
    the k ids is at most 1) and equals the dense KL when the teacher's top-k holds all its mass.

    Args:
        student_logits: ``[B, L, V]``.
        teacher_ids: ``[B, L, k]`` int64 token ids (< V).
        teacher_logprobs: ``[B, L, k]`` teacher log-probs at T=1; ``-inf`` marks padding
            entries (fewer than k recorded), which get probability 0.
        mask: ``[B, L]`` bool; False positions return 0 (their top-k rows may be all padding).
        temperature: ``T > 0``.
    Returns:
        ``[B, L]`` KL divergences in nats, without the ``T**2`` factor.
    """
    mask = mask & torch.isfinite(teacher_logprobs).any(-1)
    lp = _float(teacher_logprobs).detach() / temperature
    lp = torch.where(mask.unsqueeze(-1), lp, torch.zeros_like(lp))  # all-padding rows: avoid NaN
    log_q = F.log_softmax(lp, dim=-1)
    q = log_q.exp()
    log_ps = F.log_softmax(_float(student_logits) / temperature, dim=-1).gather(-1, teacher_ids.long())
    kl = torch.where(q > 0, q * (log_q - log_ps), torch.zeros_like(q)).sum(-1)
    return kl * mask.to(kl.dtype)


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Summed ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE`` over the target tokens.

    With no teacher signal (neither ``teacher_logits`` nor ``teacher_ids``) this is plain SFT:
    the summed cross-entropy (``alpha`` is ignored). Both terms are taken only where
    ``labels != ignore_index``.

    Args:
        student_logits: ``[B, L, V]`` aligned with ``labels``.
        labels: ``[B, L]`` target ids, ``ignore_index`` elsewhere.
        teacher_logits: ``[B, L, Vt]`` dense teacher logits (signal "live").
        teacher_ids, teacher_logprobs: ``[B, L, k]`` teacher top-k (signal "topk").
        alpha: weight of the KD term, in [0, 1].
        temperature: softmax temperature ``T`` of the KD term (CE is always at T=1).
        vocab_size: if given, the KD term only sees the first ``vocab_size`` logits (the
            tokenizer's vocabulary; rows beyond it are embedding padding).
    Returns:
        ``(sum_loss, n_tokens, parts)``: the scalar *sum* over target tokens (divide it by the
        token count of the whole global batch), the local number of target tokens, and a dict of
        detached per-term sums: ``ce``, and ``kd`` (KL without ``alpha``/``T**2``) for KD.
    """
    mask = labels != ignore_index
    n_tokens = mask.sum()
    ce = cross_entropy(student_logits, labels, ignore_index)
    parts = {"ce": ce.sum().detach()}
    if teacher_logits is None and teacher_ids is None:
        return ce.sum(), n_tokens, parts
    s_logits = student_logits if vocab_size is None else student_logits[..., :vocab_size]
    if teacher_logits is not None:
        t_logits = teacher_logits if vocab_size is None else teacher_logits[..., :vocab_size]
        kl = forward_kl(s_logits, t_logits, mask, temperature)
    else:
        if teacher_logprobs is None:
            raise ValueError("teacher_ids needs teacher_logprobs")
        kl = sparse_forward_kl(s_logits, teacher_ids, teacher_logprobs, mask, temperature)
    parts["kd"] = kl.sum().detach()
    total = alpha * temperature**2 * kl.sum() + (1.0 - alpha) * ce.sum()
    return total, n_tokens, parts
