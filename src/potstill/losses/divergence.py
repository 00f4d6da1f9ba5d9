"""Per-token distillation losses: the divergences, cross-entropy, sparse (top-k / sampled) targets, their mix.

This module is the *reference* implementation, written plainly on full ``[..., V]`` tensors and
differentiated by autograd; :mod:`potstill.losses.chunked` computes the same quantities from final
hidden states a chunk of tokens at a time (closed-form gradients, tested against these).

Conventions shared by every function here:

* ``...`` any leading shape (``[B, L]`` or ``[N]``), ``V`` vocabulary, ``k`` sparse-target width.
* Inputs are *aligned*: ``student_logits[..., t, :]`` is the distribution that predicts
  ``labels[..., t]`` (the caller does the causal shift).
* ``mask`` is a bool tensor ``[...]``; positions where it is False contribute exactly 0 (and get
  exactly 0 gradient). :func:`cross_entropy` takes ``labels`` with ``ignore_index`` instead.
* Functions return *per-token* tensors ``[...]`` (not reduced), computed in float32 at least
  (bf16/fp16 inputs are upcast), so that callers can sum them and divide by whatever token count
  makes the normalisation exact (the number of response tokens in the global batch: a mean over
  tokens that is the same under any padding or gradient-accumulation split).
* Notation: ``p`` is the teacher distribution, ``q`` the student's; both at temperature ``T``:
  ``p = softmax(teacher_logits / T)``, ``q = softmax(student_logits / T)``. The divergences
  themselves take log-probabilities; the ``T**2`` gradient-scale correction of Hinton et al. is
  applied by :func:`distillation_loss` (and the chunked loss), not here.
* If the student and teacher vocabularies differ in size (padded embedding matrices), the
  logits-level functions slice both to the smaller one (or to ``vocab_size``) before the softmax.
* ``-inf`` logits (a padded or masked vocabulary: padding rows of an output layer, masked ids)
  are zero probabilities, with ``0 log 0 = 0``:

  - an entry that is ``-inf`` in *both* models is outside the support: it contributes exactly 0
    and gets exactly 0 gradient, as if it were removed from the vocabulary (never NaN);
  - an entry that is ``-inf`` in *one* model only keeps its meaning. Where the other model has
    no mass there either, it adds 0 as above. Where the other model has mass, the bounded
    divergences (``jsd`` with ``0 < beta < 1``, the skew KLs with ``alpha > 0``, ``tvd``) stay
    finite with finite gradients, but a plain KL is genuinely infinite and is returned as
    ``+inf``, not hidden: forward KL with teacher mass where the student is ``-inf``, reverse KL
    with student mass where the teacher is ``-inf`` (likewise ``jsd`` at ``beta`` 0 / 1 and the
    skew KLs at ``alpha = 0``). The gradient of such an infinite value is not meaningful: it is
    ``q - p`` (finite) for the forward KL, and not finite (inf / NaN) for the reverse KL.

The divergences (``name`` for :func:`divergence`):

==================  ==================================================================
``forward_kl``      ``KL(p || q) = sum p (log p - log q)`` (mode-covering; Hinton KD)
``reverse_kl``      ``KL(q || p) = sum q (log q - log p)`` (mode-seeking; MiniLLM)
``jsd``             generalized JSD with ``beta`` (GKD, Agarwal et al. 2024), see :func:`gjsd`
``skew_forward_kl`` ``KL(p || a p + (1 - a) q)``, ``a = skew_alpha`` (DistiLLM, Ko et al. 2024)
``skew_reverse_kl`` ``KL(q || a q + (1 - a) p)`` (DistiLLM)
``tvd``             total variation distance ``0.5 * sum |p - q|``
==================  ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _plogp_ratio(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``sum a (log a - log b)`` over the last dim, with ``0 log 0 = 0`` (``a = exp(log_a)``).

    Where ``a == 0`` both log-probabilities are replaced by 0 *before* the subtraction: the term is
    then ``0 * 0``, and its gradient is 0 rather than ``0 * (-inf - -inf) = NaN`` (autograd
    differentiates both branches of a ``where``). Where ``a > 0`` and ``b == 0`` the term is
    ``+inf``, a genuinely infinite divergence.
    """
    a = log_a.exp()
    keep = a != 0  # NaN inputs are kept: they show
    diff = torch.where(keep, log_a, 0.0) - torch.where(keep, log_b, 0.0)
    return (a * diff).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w a + (1 - w) b)`` from log-probabilities, for ``0 <= w <= 1``.

    Where both are ``-inf`` the mixture is ``-inf`` too; ``logaddexp``'s gradient there would be
    NaN, so it only sees finite stand-ins (0) at those entries.
    """
    if w <= 0.0:
        return log_b
    if w >= 1.0:
        return log_a
    empty = torch.isneginf(log_a) & torch.isneginf(log_b)
    safe_a, safe_b = torch.where(empty, 0.0, log_a), torch.where(empty, 0.0, log_b)
    return torch.where(empty, log_a, torch.logaddexp(safe_a + math.log(w), safe_b + math.log1p(-w)))


# ---------------------------------------------------------------------------------------------
# The divergences, per token, from log-probabilities.
#
# Each takes ``log_q`` (student) and ``log_p`` (teacher) log-probabilities ``[..., V]`` over the
# same vocabulary (each row sums to 1 in probability) and returns ``[...]`` in nats, >= 0.


def fkl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Forward KL ``KL(p || q) = sum_v p_v (log p_v - log q_v)``; ``0 log 0 = 0`` for teacher zeros."""
    return _plogp_ratio(log_p, log_q)


def rkl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Reverse KL ``KL(q || p) = sum_v q_v (log q_v - log p_v)``."""
    return _plogp_ratio(log_q, log_p)


def gjsd(log_q: torch.Tensor, log_p: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, TRL's ``generalized_jsd_loss`` convention (GKD, Eq. 1).

    With the mixture ``m = beta p + (1 - beta) q``::

        JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m)      for 0 < beta < 1
        JSD_0    = KL(p || q)  (forward KL)                     at beta = 0
        JSD_1    = KL(q || p)  (reverse KL)                     at beta = 1

    ``beta = 0.5`` is the symmetric JSD (<= log 2). The end points are defined as the KLs, as in
    TRL: the mixture formula itself vanishes as ``beta -> 0`` or ``1`` (``m`` tends to ``q`` or
    ``p``), but its *shape* tends to the KLs: ``JSD_beta / beta -> KL(p || q)`` as ``beta -> 0``
    and ``JSD_beta / (1 - beta) -> KL(q || p)`` as ``beta -> 1`` (first-order expansion in
    ``beta``), so small ``beta`` behaves like forward KL and ``beta`` near 1 like reverse KL, at a
    loss scale that shrinks like ``beta`` (resp. ``1 - beta``).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return fkl(log_q, log_p)
    if beta == 1.0:
        return rkl(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _plogp_ratio(log_p, log_m) + (1.0 - beta) * _plogp_ratio(log_q, log_m)


def skew_fkl(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew forward KL (DistiLLM): ``KL(p || alpha p + (1 - alpha) q)``; ``alpha = 0`` is forward KL.

    Bounded by ``-log(alpha)`` for ``alpha > 0``, which keeps gradients stable where ``q`` is tiny.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    return _plogp_ratio(log_p, _log_mix(log_p, log_q, alpha))


def skew_rkl(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew reverse KL (DistiLLM): ``KL(q || alpha q + (1 - alpha) p)``; ``alpha = 0`` is reverse KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    return _plogp_ratio(log_q, _log_mix(log_q, log_p, alpha))


def tvd(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Total variation distance ``0.5 * sum_v |p_v - q_v|``, in [0, 1] (its gradient is a subgradient)."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


_FUNCS: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": fkl,
    "reverse_kl": rkl,
    "jsd": gjsd,
    "skew_forward_kl": skew_fkl,
    "skew_reverse_kl": skew_rkl,
    "tvd": tvd,
}


def check_divergence(name: str, beta: float = 0.5, skew_alpha: float = 0.1) -> None:
    """ValueError unless ``name`` is one of :data:`DIVERGENCES` and its parameter is in range."""
    if name not in _FUNCS:
        raise ValueError(f"unknown divergence '{name}' (expected one of {', '.join(DIVERGENCES)})")
    if name == "jsd" and not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if name.startswith("skew_") and not 0.0 <= skew_alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {skew_alpha}")


def divergence(
    name: str,
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Per-token divergence ``name`` between teacher and student distributions.

    Args:
        name: one of :data:`DIVERGENCES`.
        student_logprobs: ``[..., V]`` student log-probabilities ``log q``.
        teacher_logprobs: ``[..., V]`` teacher log-probabilities ``log p`` (no gradient flows to it).
        mask: ``[...]`` bool; False positions return exactly 0 (and pass no gradient). None: all.
        beta: ``jsd``'s interpolation (0: forward KL, 1: reverse KL; see :func:`gjsd`).
        skew_alpha: the skew KLs' mixing weight ``alpha`` in [0, 1).
    Returns:
        ``[...]`` float32/64 divergences in nats.
    """
    check_divergence(name, beta, skew_alpha)
    log_q, log_p = _float(student_logprobs), _float(teacher_logprobs).detach()
    if mask is not None and not bool(mask.all()):
        # Masked rows (possibly garbage, e.g. -inf padding) become uniform before the math so
        # that neither the value nor the gradient can be NaN there.
        keep, uniform = mask.unsqueeze(-1), -math.log(log_q.shape[-1])
        log_q = torch.where(keep, log_q, torch.full_like(log_q, uniform))
        log_p = torch.where(keep, log_p, torch.full_like(log_p, uniform))
    fn = _FUNCS[name]
    if name == "jsd":
        out = fn(log_q, log_p, beta)
    elif name.startswith("skew_"):
        out = fn(log_q, log_p, skew_alpha)
    else:
        out = fn(log_q, log_p)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out


def divergence_from_logits(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """:func:`divergence` of ``softmax(logits / T)``; vocabularies are sliced to the smaller one.

    Args:
        student_logits: ``[..., Vs]``; teacher_logits: ``[..., Vt]`` (detached).
        mask: ``[...]`` bool or None; temperature: ``T > 0``.
    Returns:
        ``[...]`` divergences at temperature ``T``, without the ``T**2`` factor.
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s, t = _float(student_logits[..., :v]), _float(teacher_logits[..., :v]).detach()
    if mask is not None and not bool(mask.all()):  # masked rows may hold garbage (-inf): no NaN through them
        keep = mask.unsqueeze(-1)
        s, t = torch.where(keep, s, torch.zeros_like(s)), torch.where(keep, t, torch.zeros_like(t))
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    return divergence(name, log_q, log_p, mask, beta=beta, skew_alpha=skew_alpha)


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token ``KL(p_teacher^T || p_student^T)`` over the full (common) vocabulary.

    Args:
        student_logits: ``[..., Vs]``.
        teacher_logits: ``[..., Vt]`` (no gradient is needed through it).
        mask: ``[...]`` bool; False positions return 0.
        temperature: ``T > 0``.
    Returns:
        ``[...]`` KL divergences in nats (>= 0), without the ``T**2`` factor.
    """
    return divergence_from_logits("forward_kl", student_logits, teacher_logits, mask, temperature)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token negative log-likelihood of ``labels`` (hard-label cross-entropy, at T=1).

    Args:
        logits: ``[..., V]`` student logits (aligned with ``labels``).
        labels: ``[...]`` target ids; ``ignore_index`` marks positions without a target.
    Returns:
        ``[...]``: ``-log softmax(logits)[label]``, 0 where ``labels == ignore_index``.
    """
    logits = _float(logits)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return flat.view(labels.shape)


# ---------------------------------------------------------------------------------------------
# Sparse targets (offline teacher signals: top-k log-probs, or sampled tokens)


def topk_target_probs(teacher_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Top-k teacher log-probs -> the target distribution over the k ids, renormalised at ``T``.

    ``pi_j = softmax(teacher_logprobs / T)_j`` over the finite entries of each row (the mass
    outside the top-k is dropped; ``-inf`` marks padding entries, which get 0). Rows with no
    finite entry become all zeros (they contribute nothing to :func:`sparse_target_loss`).

    Args:
        teacher_logprobs: ``[..., k]`` teacher log-probs at T=1 (``-inf``: padding).
    Returns:
        ``[..., k]`` float32 target probabilities (rows sum to 1, or 0 for empty rows).
    """
    lp = _float(teacher_logprobs).detach()
    finite = torch.isfinite(lp)
    has = finite.any(-1, keepdim=True)
    lp = torch.where(has, lp, torch.zeros_like(lp)) / temperature  # all-padding rows: avoid NaN
    probs = F.softmax(lp, dim=-1)
    return torch.where(has & finite, probs, torch.zeros_like(probs))


def _sparse_terms(student_logits, target_ids, target_probs, mask, temperature):
    log_q = F.log_softmax(_float(student_logits) / temperature, dim=-1)
    if target_ids is None:  # dense targets: column j is token j
        k = min(target_probs.shape[-1], log_q.shape[-1])
        log_q, target_probs = log_q[..., :k], target_probs[..., :k]
    else:
        log_q = log_q.gather(-1, target_ids.long().expand(*log_q.shape[:-1], target_ids.shape[-1]))
    pi = _float(target_probs).detach()
    keep = (pi > 0) & mask.unsqueeze(-1)
    pi = torch.where(keep, pi, torch.zeros_like(pi))
    log_q = torch.where(keep, log_q, torch.zeros_like(log_q))
    return pi, log_q, keep


def sparse_target_loss(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_probs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token cross-entropy of the student (at ``T``) against a sparse target distribution.

    ``loss = -sum_j pi_j log q^T[id_j]`` with ``q^T = softmax(student_logits / T)`` over the whole
    vocabulary. The targets ``pi`` need not sum to 1:

    * top-k signals: ``pi`` = the teacher's top-k probabilities (the un-modelled tail has no term,
      so the loss is the forward-KL cross-entropy restricted to the top-k), or the top-k
      renormalised (:func:`topk_target_probs`, as :func:`sparse_forward_kl` uses);
    * sampled signals: ``pi_j = count_j / n`` for ``n`` tokens sampled from the teacher at the
      position. Then ``E[pi_j] = p_j`` and the loss is linear in ``pi``, so its value and gradient
      are *unbiased* estimates of the dense cross-entropy ``-sum_v p_v log q_v`` -- i.e. of the
      forward KL ``KL(p || q)`` up to the teacher's entropy, which has no gradient.

    Its gradient w.r.t. the scaled logits ``z / T`` is ``q * sum_j pi_j - pi`` (scattered).

    Args:
        student_logits: ``[..., V]``.
        target_ids: ``[..., k]`` int token ids (< V); padding entries may hold any valid id.
            None: dense targets, ``target_probs[..., j]`` is token ``j``'s probability.
        target_probs: ``[..., k]`` target probabilities >= 0 (padding: 0).
        mask: ``[...]`` bool; False positions return exactly 0.
        temperature: ``T > 0``.
    Returns:
        ``[...]`` cross-entropies in nats, without the ``T**2`` factor.
    """
    pi, log_q, _ = _sparse_terms(student_logits, target_ids, target_probs, mask, temperature)
    return -(pi * log_q).sum(-1)


def sparse_forward_kl(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token forward KL against a teacher known only through its top-k log-probs.

    The teacher distribution is the top-k renormalised at temperature ``T`` over the k ids
    (:func:`topk_target_probs`: ``pi = softmax(teacher_logprobs / T)`` over the finite entries).
    The student keeps its full-vocabulary distribution ``q^T``, read at the k ids:
    ``KL = sum_j pi_j (log pi_j - log q^T[id_j])`` = :func:`sparse_target_loss` minus the target's
    entropy (same gradient). This is >= 0 and equals the dense KL when the top-k holds all the
    teacher's mass.

    Args:
        student_logits: ``[..., V]``.
        teacher_ids: ``[..., k]`` int64 token ids (< V).
        teacher_logprobs: ``[..., k]`` teacher log-probs at T=1; ``-inf`` marks padding entries.
        mask: ``[...]`` bool; False positions return 0 (their top-k rows may be all padding).
        temperature: ``T > 0``.
    Returns:
        ``[...]`` KL divergences in nats, without the ``T**2`` factor.
    """
    pi = topk_target_probs(teacher_logprobs, temperature)
    pi, log_q, keep = _sparse_terms(student_logits, teacher_ids, pi, mask, temperature)
    log_pi = torch.where(keep, pi, torch.ones_like(pi)).log()
    return (pi * (log_pi - log_q)).sum(-1)


# ---------------------------------------------------------------------------------------------
# The training loss (full logits)


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    target_ids: torch.Tensor | None = None,
    target_probs: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    kd=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Summed ``alpha * T^2 * D(p^T, q^T) + (1 - alpha) * CE`` over the target tokens (full logits).

    The reference for :func:`potstill.losses.chunked.chunked_distillation_loss`, which computes the
    same from hidden states without materialising the logits.

    With no teacher signal (neither ``teacher_logits`` nor ``teacher_ids``) this is plain SFT:
    the summed cross-entropy (``alpha`` is ignored). Both terms are taken only where
    ``labels != ignore_index``. CE is at T=1 over all of the student's logits.

    Args:
        student_logits: ``[..., V]`` aligned with ``labels``.
        labels: ``[...]`` target ids, ``ignore_index`` elsewhere.
        teacher_logits: ``[..., Vt]`` dense teacher logits (signal "live").
        teacher_ids, teacher_logprobs: ``[..., k]`` teacher top-k (signal "topk"; the KD term is
            :func:`sparse_forward_kl`, so ``divergence`` must be ``forward_kl``).
        target_ids, target_probs: ``[..., k]`` a sparse teacher target already at ``T`` (a signal
            store's rows; ``target_ids`` None: dense): the KD term is
            ``sum_j pi_j (log pi_j - log q^T[id_j])`` (:func:`sparse_target_loss` plus the
            constant ``sum pi log pi``); ``divergence`` must be ``forward_kl``.
        alpha: weight of the KD term, in [0, 1].
        temperature: softmax temperature ``T`` of the KD term (CE is always at T=1).
        vocab_size: if given, the KD term only sees the first ``vocab_size`` logits (the
            tokenizer's vocabulary; rows beyond it are embedding padding).
        divergence, beta, skew_alpha: the KD divergence ``D`` (see :func:`divergence`).
        kd: the run's KD settings in one object (e.g. a frozen :class:`potstill.config.KDSettings`;
            anything with ``alpha``, ``temperature``, ``divergence``, ``beta``, ``skew_alpha``): when
            given, it replaces those five keywords.

    Returns:
        ``(sum_loss, n_tokens, parts)``: the scalar *sum* over target tokens (divide it by the
        token count of the whole global batch), the local number of target tokens, and a dict of
        detached per-term sums: ``ce``, and ``kd`` (the divergence without ``alpha``/``T**2``) for KD.
    """
    if kd is not None:  # the KD settings object, as the trainer passes it down from the config
        alpha, temperature, divergence, beta, skew_alpha = (
            kd.alpha,
            kd.temperature,
            kd.divergence,
            kd.beta,
            kd.skew_alpha,
        )
    check_divergence(divergence, beta, skew_alpha)
    mask = labels != ignore_index
    n_tokens = mask.sum()
    ce = cross_entropy(student_logits, labels, ignore_index)
    parts = {"ce": ce.sum().detach()}
    if teacher_logits is None and teacher_ids is None and target_probs is None:
        return ce.sum(), n_tokens, parts
    s_logits = student_logits if vocab_size is None else student_logits[..., :vocab_size]
    if teacher_logits is not None:
        t_logits = teacher_logits if vocab_size is None else teacher_logits[..., :vocab_size]
        kd = divergence_from_logits(divergence, s_logits, t_logits, mask, temperature, beta=beta, skew_alpha=skew_alpha)
    else:
        if divergence != "forward_kl":
            raise ValueError(f"a sparse teacher signal supports only divergence 'forward_kl', not '{divergence}'")
        if target_probs is not None:
            kd = sparse_target_loss(s_logits, target_ids, target_probs, mask, temperature)
            pi = _float(target_probs).detach()
            if target_ids is None:
                pi = pi[..., : s_logits.shape[-1]]
            kd = kd + torch.where(mask, torch.xlogy(pi, pi).sum(-1), torch.zeros_like(kd))
        else:
            if teacher_logprobs is None:
                raise ValueError("teacher_ids needs teacher_logprobs")
            kd = sparse_forward_kl(s_logits, teacher_ids, teacher_logprobs, mask, temperature)
    parts["kd"] = kd.sum().detach()
    total = alpha * temperature**2 * kd.sum() + (1.0 - alpha) * ce.sum()
    return total, n_tokens, parts
