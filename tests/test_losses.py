"""potstill.losses vs straightforward float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.losses import IGNORE_INDEX, cross_entropy, distillation_loss, forward_kl, sparse_forward_kl

B, L, V, K = 2, 5, 37, 6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, L, V, generator=g) * 2
    t = torch.randn(B, L, V, generator=g) * 2
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :2] = IGNORE_INDEX
    labels[1, -1] = IGNORE_INDEX
    return s, t, labels


def ref_softmax(x, temp):
    x = [v / temp for v in x]
    m = max(x)
    z = sum(math.exp(v - m) for v in x)
    return [math.exp(v - m) / z for v in x]


def ref_kl(s_row, t_row, temp):
    p, q = ref_softmax(t_row, temp), ref_softmax(s_row, temp)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_ce(s_row, label):
    return -math.log(ref_softmax(s_row, 1.0)[label])


def ref_sparse_kl(s_row, ids, lps, temp):
    q = ref_softmax(lps, temp)
    p = ref_softmax(s_row, temp)
    return sum(qi * math.log(qi / p[i]) for qi, i in zip(q, ids) if qi > 0)


def table(fn, mask):
    return torch.tensor([[fn(b, t) if mask[b, t] else 0.0 for t in range(L)] for b in range(B)], dtype=torch.float64)


def topk_of(t):
    lp, ids = torch.log_softmax(t, -1).topk(K, dim=-1)
    return ids, lp


def test_cross_entropy_matches_float64(batch):
    s, _, labels = batch
    got = cross_entropy(s, labels)
    mask = labels != IGNORE_INDEX
    want = table(lambda b, t: ref_ce(s[b, t].double().tolist(), int(labels[b, t])), mask)
    assert got.dtype == torch.float32 and got.shape == (B, L)
    assert rel_err(got, want) <= 1e-6
    assert (got[~mask] == 0).all()


@pytest.mark.parametrize("temp", [1.0, 2.0, 0.7])
def test_forward_kl_matches_float64(batch, temp):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    got = forward_kl(s, t, mask, temp)
    want = table(lambda b, i: ref_kl(s[b, i].double().tolist(), t[b, i].double().tolist(), temp), mask)
    assert rel_err(got, want) <= 1e-6
    assert (got[~mask] == 0).all() and (got >= 0).all()


def test_forward_kl_slices_to_smaller_vocab(batch):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    padded = torch.cat([t, torch.randn(B, L, 5) * 10], -1)  # teacher with 5 padded embedding rows
    assert torch.allclose(forward_kl(s, padded, mask, 1.0), forward_kl(s, t, mask, 1.0))


def test_forward_kl_zero_when_equal(batch):
    s, _, labels = batch
    assert forward_kl(s, s.clone(), labels != IGNORE_INDEX, 1.5).abs().max() < 1e-6


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_sparse_forward_kl_matches_float64(batch, temp):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    ids, lps = topk_of(t)
    lps[1, 2, -2:] = float("-inf")  # a row with only k-2 recorded entries
    got = sparse_forward_kl(s, ids, lps, mask, temp)

    def ref(b, i):
        keep = [j for j in range(K) if math.isfinite(float(lps[b, i, j]))]
        return ref_sparse_kl(
            s[b, i].double().tolist(), [int(ids[b, i, j]) for j in keep], [float(lps[b, i, j]) for j in keep], temp
        )

    want = table(ref, mask)
    assert rel_err(got, want) <= 1e-6
    assert torch.isfinite(got).all() and (got[~mask] == 0).all()


def test_sparse_kl_equals_dense_kl_with_full_topk(batch):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    lp, ids = torch.log_softmax(t, -1).topk(V, dim=-1)
    assert rel_err(sparse_forward_kl(s, ids, lp, mask, 2.0), forward_kl(s, t, mask, 2.0).double()) <= 1e-5


def test_sparse_kl_all_padding_rows_masked():
    s = torch.randn(1, 3, V)
    ids = torch.zeros(1, 3, K, dtype=torch.long)
    lps = torch.full((1, 3, K), float("-inf"))
    got = sparse_forward_kl(s.requires_grad_(), ids, lps, torch.ones(1, 3, dtype=torch.bool), 1.0)
    got.sum().backward()
    assert (got == 0).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("alpha,temp", [(0.5, 1.0), (0.3, 2.0), (1.0, 4.0), (0.0, 2.0)])
def test_distillation_loss_mix_and_t2_scaling(batch, alpha, temp):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    total, n, parts = distillation_loss(s, labels, teacher_logits=t, alpha=alpha, temperature=temp)
    kl = sum(ref_kl(s[b, i].double().tolist(), t[b, i].double().tolist(), temp) for b in range(B) for i in range(L) if mask[b, i])
    ce = sum(ref_ce(s[b, i].double().tolist(), int(labels[b, i])) for b in range(B) for i in range(L) if mask[b, i])
    assert int(n) == int(mask.sum())
    assert abs(float(parts["kd"]) - kl) / kl <= 1e-6 and abs(float(parts["ce"]) - ce) / ce <= 1e-6
    want = alpha * temp**2 * kl + (1 - alpha) * ce
    assert abs(float(total) - want) / want <= 1e-6


def test_distillation_loss_topk_and_sft(batch):
    s, t, labels = batch
    ids, lps = topk_of(t)
    mask = labels != IGNORE_INDEX
    total, n, parts = distillation_loss(s, labels, teacher_ids=ids, teacher_logprobs=lps, alpha=0.25, temperature=2.0)
    kl = sparse_forward_kl(s, ids, lps, mask, 2.0).sum()
    ce = cross_entropy(s, labels).sum()
    assert torch.allclose(total, 0.25 * 4 * kl + 0.75 * ce)
    sft_total, sft_n, sft_parts = distillation_loss(s, labels)
    assert torch.allclose(sft_total, ce) and set(sft_parts) == {"ce"} and int(sft_n) == int(n)


def test_distillation_loss_vocab_size_ignores_padded_rows(batch):
    s, t, labels = batch
    s_pad = torch.cat([s, torch.full((B, L, 3), 30.0)], -1)  # huge logits on padded rows
    t_pad = torch.cat([t, torch.randn(B, L, 7)], -1)
    a = distillation_loss(s_pad, labels, teacher_logits=t_pad, vocab_size=V)[2]["kd"]
    b = distillation_loss(s, labels, teacher_logits=t)[2]["kd"]
    assert torch.allclose(a, b)


def test_masked_positions_get_no_gradient(batch):
    s, t, labels = batch
    s = s.clone().requires_grad_()
    total, _, _ = distillation_loss(s, labels, teacher_logits=t, alpha=0.5, temperature=2.0)
    total.backward()
    ignored = labels == IGNORE_INDEX
    assert (s.grad[ignored] == 0).all() and (s.grad[~ignored].abs().sum(-1) > 0).all()


def test_bf16_logits_are_upcast(batch):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    out = forward_kl(s.bfloat16(), t.bfloat16(), mask, 1.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, forward_kl(s.bfloat16().float(), t.bfloat16().float(), mask, 1.0))
