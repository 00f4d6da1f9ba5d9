"""The distillation loss from final hidden states, a chunk of tokens at a time (no full logits).

:func:`chunked_distillation_loss` computes exactly what
:func:`potstill.losses.divergence.distillation_loss` computes from full logits --
``alpha * T^2 * D(p^T, q^T) + (1 - alpha) * CE`` summed over the target tokens -- but takes the
student's final hidden states ``h`` and lm_head ``W`` (and the live teacher's, or a sparse teacher
target) instead of logits. The logits ``h[chunk] @ W.T`` exist for ``chunk_size`` tokens at a time
only, so no ``[tokens, vocab]`` tensor is ever materialised and the loss's memory is flat in the
number of tokens.

Gradients are exact and computed *during the forward pass* (Liger-kernel style): for each chunk
the closed-form gradient of the loss w.r.t. the chunk's logits ``G`` is formed in the same pass as
the value, then folded into ``dL/dh[chunk] = G @ W`` and ``dL/dW += G.T @ h[chunk]`` and dropped.
The autograd backward only scales these stored gradients by the incoming gradient (so calling
backward twice on the same graph is not supported). Nothing is recomputed: the chunked forward +
backward costs the two lm_head matmuls plus the two gradient matmuls, the same as the full-logit
implementation, with far less memory traffic: every chunk reuses the same few ``[chunk, V]``
scratch buffers (in-place and ``out=`` operations), so nothing of size ``[tokens, V]`` is allocated.

Normalisation: the loss is a *sum* over target tokens and chunks are never averaged; divide by
the number of target tokens of the whole global batch (the trainer's ``num_items_in_batch``),
which keeps the mean exact under padding, chunking and gradient accumulation.

Only target tokens (``labels != ignore_index``) are gathered and computed (prompt and padding
tokens cost nothing); their gradient rows are scattered back by autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .divergence import DIVERGENCES, IGNORE_INDEX, check_divergence

# Tokens per chunk. Chosen by measurement (benchmarks/kd_loss_memory.py; benchmarks/README.md):
# the scratch space is 5 [chunk, V] float32 buffers, reused by every chunk (5 * 125 KiB per token
# at V=32000: 156 MiB for 256 tokens; a live teacher adds a [chunk, V] bool one, 7.8 MiB), and on
# CPU 256-token chunks are as fast as 512 or 1024 (each lm_head matmul is still [256, H] x [H, V])
# while 64-128 lose a little to per-chunk overhead.
DEFAULT_CHUNK_SIZE = 256


def _work(like: torch.Tensor, work: list[torch.Tensor] | None, i: int, dtype: torch.dtype | None = None):
    if work is not None and len(work) > i and work[i] is not None:
        return work[i]
    return torch.empty_like(like, dtype=dtype)


def _zero_where_zero_(x: torch.Tensor, a: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """``x <- 0`` where ``a == 0``, in place (``flag``: bool scratch shaped like ``x``).

    The ``0 log 0 = 0`` convention for a term ``a * x`` whose ``x`` is a difference of
    log-probabilities: where ``a``'s log-probability is ``-inf``, ``x`` is ``-inf`` or (``-inf``
    in both models) NaN, and ``0 * x`` would be NaN. Masking ``x`` itself (not only the product)
    also keeps the gradients that reuse ``x`` finite.
    """
    return x.masked_fill_(torch.eq(a, 0, out=flag), 0.0)


def _target_dot(pi: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_j pi_j log_q_j`` per row, where an entry with ``pi_j = 0`` adds 0 even if ``log_q_j = -inf``
    (a padding entry, or an id the student masks with a ``-inf`` logit: ``0 * -inf`` is NaN)."""
    return (pi * torch.where(pi > 0, log_q, 0.0)).sum(-1)


def _project_(u: torch.Tensor, q: torch.Tensor, u_sum: torch.Tensor | None = None) -> torch.Tensor:
    """``u <- u - q * sum(u)`` in place: the gradient w.r.t. the logits ``s`` given ``u = dD/d(log q)``
    (the softmax Jacobian; ``log q = log_softmax(s)``)."""
    if u_sum is None:
        u_sum = u.sum(-1)
    return u.addcmul_(q, u_sum.unsqueeze(-1), value=-1.0)


def kd_value_and_grad(
    name: str,
    log_q: torch.Tensor,
    log_p: torch.Tensor,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    work: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A divergence's per-token value and its closed-form gradient w.r.t. the student's scaled logits.

    With ``log_q = log_softmax(s)`` the student's and ``log_p`` the teacher's log-probabilities
    ``[C, V]``, returns ``(D [C], dD/ds [C, V])`` for ``D = divergence(name, log_q, log_p)``
    (see :mod:`potstill.losses.divergence` for the definitions). ``-inf`` entries follow the
    reference's rules: ``0 log 0 = 0``, so an entry ``-inf`` in both is outside the support (adds
    0, gets gradient 0), and a genuinely infinite KL is ``+inf``. Writing ``u = dD/d(log q)``
    (``q`` and ``log q`` varying together), ``dD/ds = u - q * sum(u)``:

    * forward KL: ``u = -p`` -> ``q - p``;
    * reverse KL: ``u = q (log q - log p + 1)`` -> ``q (log q - log p - D)``;
    * jsd(beta): ``u = (1 - beta) q (log q - log m)`` with ``m = beta p + (1 - beta) q``
      (the terms through ``m`` cancel);
    * skew forward KL(a): ``u = -(1 - a) p q / m`` with ``m = a p + (1 - a) q``;
    * skew reverse KL(a): ``u = q (log q - log m + 1 - a q / m)`` with ``m = a q + (1 - a) p``
      (the ``+1`` sums to 1 and cancels in the projection);
    * tvd: ``u = q sign(q - p) / 2`` (the subgradient autograd also takes).

    Memory: ``log_q`` is left intact, ``log_p`` is overwritten, and ``work`` (two float tensors
    shaped like ``log_q``, then optionally a bool one; those missing are allocated) is scratch
    space; the gradient is returned in one of ``log_p`` / ``work``. Tested against autograd on the
    reference functions (tests/test_chunked.py).
    """
    check_divergence(name, beta, skew_alpha)
    if name == "jsd" and beta == 0.0 or name == "skew_forward_kl" and skew_alpha == 0.0:
        name = "forward_kl"
    elif name == "jsd" and beta == 1.0 or name == "skew_reverse_kl" and skew_alpha == 0.0:
        name = "reverse_kl"
    w0, w1 = _work(log_q, work, 0), _work(log_q, work, 1)
    flag = _work(log_q, work, 2, torch.bool) if name != "tvd" else None
    if name == "forward_kl":
        p = torch.exp(log_p, out=w0)
        d = _zero_where_zero_(torch.sub(log_p, log_q, out=w1), p, flag)
        val = d.mul_(p).sum(-1)  # sum p (log p - log q)
        g = torch.exp(log_q, out=w1).sub_(p)  # q - p
        return val, g
    if name == "reverse_kl":
        q = torch.exp(log_q, out=w0)
        d = _zero_where_zero_(torch.sub(log_q, log_p, out=w1), q, flag)
        val = torch.mul(q, d, out=log_p).sum(-1)  # sum q (log q - log p)
        return val, d.sub_(val.unsqueeze(-1)).mul_(q)  # q (log q - log p - D)
    if name == "tvd":
        q = torch.exp(log_q, out=w0)
        diff = torch.sub(q, torch.exp(log_p, out=w1), out=w1)  # q - p
        val = torch.abs(diff, out=log_p).sum(-1).mul_(0.5)
        return val, _project_(diff.sign_().mul_(q).mul_(0.5), q)
    if name == "jsd":
        log_m = torch.logaddexp(
            torch.add(log_p, math.log(beta), out=w0), torch.add(log_q, math.log1p(-beta), out=w1), out=w0
        )
        dp = torch.sub(log_p, log_m, out=w1)
        p = log_p.exp_()
        kl_pm = _zero_where_zero_(dp, p, flag).mul_(p).sum(-1)  # sum p (log p - log m)
        dq = torch.sub(log_q, log_m, out=w0)
        q = torch.exp(log_q, out=w1)
        qdq = torch.mul(q, _zero_where_zero_(dq, q, flag), out=log_p)
        kl_qm = qdq.sum(-1)  # sum q (log q - log m)
        val = beta * kl_pm + (1.0 - beta) * kl_qm
        return val, _project_(qdq.mul_(1.0 - beta), q, kl_qm * (1.0 - beta))
    if name == "skew_forward_kl":
        a = skew_alpha
        log_m = torch.logaddexp(torch.add(log_p, math.log(a), out=w0), torch.add(log_q, math.log1p(-a), out=w1), out=w0)
        d = torch.sub(log_p, log_m, out=w1)  # log p - log m
        u = torch.sub(log_q, log_m, out=w0).add_(log_p).exp_()  # p q / m
        p = log_p.exp_()
        torch.eq(p, 0, out=flag)  # p = 0: both terms are 0 (NaN where m = 0 too)
        val = d.masked_fill_(flag, 0.0).mul_(p).sum(-1)  # sum p (log p - log m)
        q = torch.exp(log_q, out=w1)
        return val, _project_(u.masked_fill_(flag, 0.0).mul_(-(1.0 - a)), q)
    if name == "skew_reverse_kl":
        a = skew_alpha
        log_m = torch.logaddexp(torch.add(log_q, math.log(a), out=w0), torch.add(log_p, math.log1p(-a), out=w1), out=w0)
        q = torch.exp(log_q, out=w1)
        d = _zero_where_zero_(torch.sub(log_q, log_m, out=w0), q, flag)  # log q - log m (0 where q = 0)
        val = torch.mul(q, d, out=log_p).sum(-1)  # sum q (log q - log m)
        u = torch.exp(d, out=log_p).mul_(-a).add_(d).mul_(q)  # q (log q - log m - a q / m)
        return val, _project_(u, q)
    raise AssertionError(name)


@dataclass(frozen=True)
class _Spec:
    mode: str  # "none" (CE only), "dense" (live teacher) or "sparse" (target ids / probs)
    divergence: str
    beta: float
    skew_alpha: float
    temperature: float
    kd_weight: float  # multiplies the KD term (alpha * T^2 in the distillation loss)
    ce_weight: float  # multiplies the hard-label CE (1 - alpha)
    vocab_size: int  # the common vocabulary of the KD term (CE uses all student rows)
    chunk_size: int


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out <- a @ b``; the product is taken in ``b``'s dtype (the weights'), ``out`` is float32/64."""
    if a.dtype == b.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return out.copy_(a.to(b.dtype) @ b)


class _Workspace:
    """Flat scratch buffers reused by every chunk (no per-chunk allocation), viewed as ``[rows, cols]``:
    ``count`` of ``dtype``, and one bool buffer if ``flags`` (:meth:`flag`)."""

    def __init__(self, count: int, numel: int, dtype: torch.dtype, device: torch.device, flags: bool = False):
        self.bufs = [torch.empty(numel, dtype=dtype, device=device) for _ in range(count)]
        self.flags = torch.empty(numel, dtype=torch.bool, device=device) if flags else None

    def __call__(self, i: int, rows: int, cols: int) -> torch.Tensor:
        return self.bufs[i][: rows * cols].view(rows, cols)

    def flag(self, rows: int, cols: int) -> torch.Tensor | None:
        return None if self.flags is None else self.flags[: rows * cols].view(rows, cols)


class _ChunkedLoss(torch.autograd.Function):
    """Sum over rows of ``kd_weight * KD + ce_weight * CE``; returns ``(loss, parts=[kd_sum, ce_sum])``."""

    @staticmethod
    def forward(ctx, h, w, b, ht, wt, bt, y, ids, probs, spec: _Spec):
        n = h.shape[0]
        v, vs, temp = spec.vocab_size, w.shape[0], spec.temperature
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        dev = h.device
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b is not None and ctx.needs_input_grad[2]
        need_grad = need_h or need_w or need_b
        grad_h = torch.zeros(n, h.shape[1], dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros(vs, w.shape[1], dtype=acc, device=dev) if need_w else None
        grad_b = torch.zeros(vs, dtype=acc, device=dev) if need_b else None
        kd_sum = torch.zeros((), dtype=acc, device=dev)
        ce_sum = torch.zeros((), dtype=acc, device=dev)
        w_t = w.t()
        wt_t = wt[:v].t() if wt is not None else None
        bt_v = bt[:v].to(acc) if bt is not None else None
        b_acc = b.to(acc) if b is not None else None
        kd_scale = spec.kd_weight / temp  # d(w D(z / T))/dz = (w / T) dD/ds; w = alpha T^2 -> alpha T
        rows = max(1, min(spec.chunk_size, n))
        # 0: student logits z (then teacher log-probs); 1: log_softmax(z) for CE, then dL/dz;
        # 2: scaled logits / teacher logits; 3: student log-probs at T; 2, 4 (+ bool): divergence scratch.
        flags = spec.mode == "dense" and spec.divergence != "tvd"
        ws = _Workspace(5 if spec.mode != "none" else 2, rows * vs, acc, dev, flags)
        shared_lq = temp == 1.0 and v == vs  # the KD's log q is the CE's log_softmax(z)
        for start in range(0, n, spec.chunk_size):
            end = min(start + spec.chunk_size, n)
            c = end - start
            hc = h[start:end]
            z = _mm_into(ws(0, c, vs), hc, w_t)
            if b_acc is not None:
                z.add_(b_acc)
            lsz = None
            if y is not None or shared_lq:
                lsz = torch.log_softmax(z, dim=-1, out=ws(1, c, vs))
            if y is not None:
                yc = y[start:end].unsqueeze(1)
                ce_sum -= lsz.gather(1, yc).sum()
            g = grad = None
            if spec.mode == "sparse" and temp == 1.0 and y is not None and need_grad:
                # Fused sparse KD + CE at T = 1: both gradients are built from softmax(z) in place.
                # With S the softmax mass of the first v (KD) rows, q = softmax(z)[:v] / S and
                # dL/dz = softmax(z) * (ce_w + kd_scale * sum(pi) / S) - ce_w onehot(y) - kd_scale pi
                # on the first v rows (ce_w * softmax(z) - ce_w onehot(y) beyond them).
                pc, ic = probs[start:end], None if ids is None else ids[start:end]
                if ic is None:
                    pc = pc[:, : min(pc.shape[1], v)]
                    cross = _target_dot(pc, lsz[:, : pc.shape[1]])
                else:
                    lq = lsz.gather(1, ic)
                    cross = _target_dot(pc, lq)
                pi_sum = pc.sum(-1)
                grad = lsz.exp_()  # softmax(z); lsz is consumed
                if v < vs:
                    # log S summed over the KD rows themselves: 1 - (the padded rows' mass) cancels (NaN, or
                    # digits lost) when the padded rows hold most of the mass. Finite while S is a normal float.
                    log_mass = grad[:, :v].sum(-1).log()
                    val = pi_sum * log_mass - cross  # -sum pi (log softmax(z)[id] - log S)
                    grad[:, :v].mul_((spec.ce_weight + kd_scale * pi_sum * log_mass.neg().exp()).unsqueeze(1))
                    if spec.ce_weight != 1.0:
                        grad[:, v:].mul_(spec.ce_weight)
                else:
                    val = -cross
                    grad.mul_((spec.ce_weight + kd_scale * pi_sum).unsqueeze(1))
                if spec.ce_weight != 0.0:
                    grad.scatter_add_(1, yc, torch.full(yc.shape, -spec.ce_weight, dtype=acc, device=dev))
                if ic is None:
                    grad[:, : pc.shape[1]].add_(pc, alpha=-kd_scale)
                else:
                    grad.scatter_add_(1, ic, pc * -kd_scale)
                kd_sum += val.sum()
            elif spec.mode != "none":
                if shared_lq:
                    log_q = lsz
                else:
                    s = torch.mul(z[:, :v], 1.0 / temp, out=ws(2, c, v))
                    log_q = torch.log_softmax(s, dim=-1, out=ws(3, c, v))
                if spec.mode == "dense":
                    zt = _mm_into(ws(2, c, v), ht[start:end], wt_t)
                    if bt_v is not None:
                        zt.add_(bt_v)
                    if temp != 1.0:
                        zt.mul_(1.0 / temp)
                    log_p = torch.log_softmax(zt, dim=-1, out=ws(0, c, v))  # z is no longer needed
                    work = [ws(2, c, v), ws(4, c, v), ws.flag(c, v)]
                    val, g = kd_value_and_grad(spec.divergence, log_q, log_p, spec.beta, spec.skew_alpha, work=work)
                else:  # sparse targets: CE against pi; gradient q * sum(pi) - pi
                    pc = probs[start:end]
                    if ids is not None:
                        ic = ids[start:end]
                        lq = log_q.gather(1, ic)
                    else:  # dense targets: pi[:, j] is token j's probability
                        pc = pc[:, : min(pc.shape[1], v)]
                        lq = log_q[:, : pc.shape[1]]
                    val = -_target_dot(pc, lq)
                    if need_grad:
                        g = torch.exp(log_q, out=ws(4, c, v)).mul_(pc.sum(-1, keepdim=True))
                        if ids is not None:
                            g.scatter_add_(1, ic, -pc)
                        else:
                            g[:, : pc.shape[1]].sub_(pc)
                kd_sum += val.sum()
            if not need_grad:
                continue
            # dL/dz = ce_weight * (softmax(z) - onehot(y)) + kd_scale * g, in buffer 1
            if grad is not None:
                pass  # built above (fused sparse path)
            elif y is not None and spec.ce_weight != 0.0:
                grad = lsz.exp_()
                grad.scatter_add_(1, yc, torch.full(yc.shape, -1.0, dtype=acc, device=dev))
                if spec.ce_weight != 1.0:
                    grad.mul_(spec.ce_weight)
                if g is not None:
                    grad[:, :v].add_(g, alpha=kd_scale)
            elif g is not None and v == vs:
                grad = g.mul_(kd_scale)
            else:
                grad = ws(1, c, vs).zero_()
                if g is not None:
                    grad[:, :v].add_(g, alpha=kd_scale)
            if need_h:
                _mm_into(grad_h[start:end], grad, w)
            if need_w:
                if hc.dtype == acc:
                    grad_w.addmm_(grad.t(), hc)
                else:
                    grad_w.add_((grad.t().to(hc.dtype) @ hc).to(acc))
            if need_b:
                grad_b.add_(grad.sum(0))
        del ws
        ctx.grads = (
            grad_h.to(h.dtype) if need_h else None,
            grad_w.to(w.dtype) if need_w else None,
            grad_b.to(b.dtype) if need_b else None,
        )
        loss = spec.kd_weight * kd_sum + spec.ce_weight * ce_sum
        parts = torch.stack([kd_sum, ce_sum]).detach()
        ctx.mark_non_differentiable(parts)
        return loss.to(h.dtype if h.dtype in (torch.float32, torch.float64) else torch.float32), parts

    @staticmethod
    def backward(ctx, grad_loss, grad_parts):
        if ctx.grads is None:
            raise RuntimeError("the chunked distillation loss supports a single backward pass per forward")
        gh, gw, gb = ctx.grads
        ctx.grads = None
        out = [None if x is None else x.mul_(grad_loss.to(x.dtype)) for x in (gh, gw, gb)]
        return out[0], out[1], out[2], None, None, None, None, None, None, None


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The rows ``idx`` of ``x`` flattened to ``[-1, x.shape[-1]]`` (differentiable)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, idx)


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def is_identity_ids(target_ids: torch.Tensor | None) -> bool:
    """True if ``target_ids`` is ``arange(k)`` broadcast over the leading dims (a dense target).

    Such ids (e.g. a dense signal store's expanded ``arange`` view) are not gathered row by row:
    ``target_probs[..., j]`` is then token ``j``'s probability, and no ``[tokens, k]`` index copy
    is made.
    """
    if target_ids is None or target_ids.dim() < 1:
        return False
    if any(st != 0 for st in target_ids.stride()[:-1]):
        return False
    row = target_ids[(0,) * (target_ids.dim() - 1)]
    return bool(torch.equal(row.cpu(), torch.arange(row.shape[0], dtype=row.dtype)))


def _sparse_rows(target_ids, target_probs, idx):
    probs = _rows(target_probs.detach(), idx)
    probs = probs if probs.dtype in (torch.float32, torch.float64) else probs.float()
    ids = None if target_ids is None or is_identity_ids(target_ids) else _rows(target_ids, idx).long()
    return ids, probs


def chunked_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    target_ids: torch.Tensor | None = None,
    target_probs: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    kd=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Summed ``alpha * T^2 * D(p^T, q^T) + (1 - alpha) * CE`` over target tokens, from hidden states.

    The same value and gradients as :func:`~potstill.losses.divergence.distillation_loss` on the
    logits ``hidden @ weight.T + bias`` (and the teacher's), without materialising them.

    Args:
        hidden: ``[..., H]`` the student's final hidden states (after the final norm), aligned with
            ``labels`` (the caller does the causal shift). Receives gradients.
        weight: ``[Vs, H]`` the student's lm_head weight (receives gradients if it requires them);
            bias: ``[Vs]`` or None.
        labels: ``[...]`` target ids, ``ignore_index`` where there is no target (prompt, padding).
        teacher_hidden: ``[..., Ht]`` a live teacher's final hidden states (no gradient), with
            teacher_weight ``[Vt, Ht]`` and teacher_bias ``[Vt]``: the dense KD term.
        target_ids, target_probs: ``[..., k]`` a sparse teacher target instead (ids < vocab, probs
            >= 0, padding prob 0; e.g. :func:`~potstill.losses.divergence.topk_target_probs`, or a
            signal store's rows, already at temperature ``T``). ``target_ids`` None (or an
            ``arange(k)`` broadcast, see :func:`is_identity_ids`) means dense targets: column ``j``
            is token ``j``. The KD term is ``sum_j pi_j (log pi_j - log q^T[id_j])`` (the sparse
            forward KL; its gradient is that of
            :func:`~potstill.losses.divergence.sparse_target_loss`); ``divergence`` must be
            ``forward_kl``.
        With neither teacher, the loss is the summed CE (plain SFT; ``alpha`` is ignored).
        alpha: weight of the KD term, in [0, 1]; temperature: ``T > 0`` of the KD term (CE at T=1).
        vocab_size: the KD term sees only the first ``min(vocab_size, Vs, Vt)`` vocabulary rows
            (padded embedding rows are dropped); CE uses all ``Vs`` student rows.
        divergence, beta, skew_alpha: the divergence ``D``
            (:data:`~potstill.losses.divergence.DIVERGENCES`).
        chunk_size: tokens per chunk; the scratch memory is ``5 * chunk_size * Vs`` floats (flat
            in the number of tokens; plus ``chunk_size * Vs`` bytes with a live teacher), plus the fp32
            gradient of ``weight``.
        kd: the run's KD settings in one object (e.g. a frozen :class:`potstill.config.KDSettings`;
            anything with ``alpha``, ``temperature``, ``divergence``, ``beta``, ``skew_alpha``): when
            given, it replaces those five keywords.

    Returns:
        ``(sum_loss, n_tokens, parts)`` as :func:`~potstill.losses.divergence.distillation_loss`:
        the scalar sum (divide by the global batch's target-token count), the local number of
        target tokens, and detached sums ``{"ce", "kd"}`` (``kd`` only with a teacher).
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
    chunk_size = _check_chunk(chunk_size)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dense, sparse = teacher_hidden is not None, target_probs is not None
    if dense and sparse:
        raise ValueError("give either a live teacher (teacher_hidden) or sparse targets (target_probs), not both")
    if dense and teacher_weight is None:
        raise ValueError("teacher_hidden needs teacher_weight")
    if target_ids is not None and target_probs is None:
        raise ValueError("target_ids needs target_probs")
    if sparse and divergence != "forward_kl":
        raise ValueError(f"a sparse teacher target supports only divergence 'forward_kl', not '{divergence}'")

    flat = labels.reshape(-1)
    keep = flat != ignore_index
    n_tokens = keep.sum()
    idx = keep.nonzero().squeeze(1)
    h = _rows(hidden, idx)
    y = flat.index_select(0, idx)
    v = weight.shape[0] if vocab_size is None else min(int(vocab_size), weight.shape[0])
    ht = ids = probs = None
    if dense:
        v = min(v, teacher_weight.shape[0])
        ht = _rows(teacher_hidden.detach(), idx)
        teacher_weight = teacher_weight.detach()
        teacher_bias = None if teacher_bias is None else teacher_bias.detach()
    if sparse:
        ids, probs = _sparse_rows(target_ids, target_probs, idx)
        if ids is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < v:
            raise ValueError(f"target_ids must be in [0, {v}) (the KD vocabulary)")
    mode = "dense" if dense else "sparse" if sparse else "none"
    kd_w = alpha * temperature**2 if mode != "none" else 0.0
    ce_w = 1.0 - alpha if mode != "none" else 1.0
    spec = _Spec(
        mode=mode,
        divergence=divergence,
        beta=beta,
        skew_alpha=skew_alpha,
        temperature=temperature,
        kd_weight=kd_w,
        ce_weight=ce_w,
        vocab_size=v,
        chunk_size=chunk_size,
    )
    loss, sums = _ChunkedLoss.apply(h, weight, bias, ht, teacher_weight, teacher_bias, y, ids, probs, spec)
    parts = {"ce": sums[1]}
    if sparse:  # cross-entropy -> KL: add the targets' sum pi log pi (a constant)
        kept = probs if ids is not None else probs[:, :v]
        neg_entropy = torch.xlogy(kept, kept).sum().to(sums.dtype)
        loss = loss + kd_w * neg_entropy
        parts["kd"] = sums[0] + neg_entropy
    elif dense:
        parts["kd"] = sums[0]
    return loss, n_tokens, parts


def chunked_sparse_target_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor | None,
    target_probs: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Summed :func:`~potstill.losses.divergence.sparse_target_loss` over ``mask``, from hidden states.

    ``sum_t -sum_j pi_tj log q^T_t[id_tj]`` with ``q^T = softmax((hidden @ weight.T + bias)[:vocab] / T)``,
    a chunk of tokens at a time (no ``T**2`` factor; see ``sparse_target_loss`` for the estimator).

    Args:
        hidden: ``[..., H]``; weight: ``[V, H]``; target_ids / target_probs: ``[..., k]``
        (``target_ids`` None or an ``arange`` broadcast: dense targets over the first k tokens);
        mask: ``[...]`` bool (positions to include).
    Returns:
        The scalar sum (divide it by the global count of included tokens).
    """
    chunk_size = _check_chunk(chunk_size)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    idx = mask.reshape(-1).nonzero().squeeze(1)
    h = _rows(hidden, idx)
    ids, probs = _sparse_rows(target_ids, target_probs, idx)
    v = weight.shape[0] if vocab_size is None else min(int(vocab_size), weight.shape[0])
    if ids is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < v:
        raise ValueError(f"target_ids must be in [0, {v}) (the vocabulary)")
    spec = _Spec(
        mode="sparse",
        divergence="forward_kl",
        beta=0.5,
        skew_alpha=0.1,
        temperature=temperature,
        kd_weight=1.0,
        ce_weight=0.0,
        vocab_size=v,
        chunk_size=chunk_size,
    )
    loss, _ = _ChunkedLoss.apply(h, weight, bias, None, None, None, None, ids, probs, spec)
    return loss


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DIVERGENCES",
    "chunked_distillation_loss",
    "chunked_sparse_target_loss",
    "is_identity_ids",
    "kd_value_and_grad",
]
