"""potstill.losses vs straightforward float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.losses import IGNORE_INDEX, cross_entropy, distillation_loss, forward_kl, sparse_forward_kl

B, L, V, K = 2, 5, 37, 6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


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
    kl = sum(
        ref_kl(s[b, i].double().tolist(), t[b, i].double().tolist(), temp)
        for b in range(B)
        for i in range(L)
        if mask[b, i]
    )
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


# ---------------------------------------------------------------------------------------------
# Every divergence vs a plain float64 reference (lists and math, no torch)

from potstill.losses import (  # noqa: E402
    DIVERGENCES,
    divergence,
    divergence_from_logits,
    sparse_target_loss,
    topk_target_probs,
)


def ref_div(name, s_row, t_row, temp, beta=0.5, a=0.1):
    p, q = ref_softmax(t_row, temp), ref_softmax(s_row, temp)

    def kl(x, y):
        return sum(xi * math.log(xi / yi) for xi, yi in zip(x, y) if xi > 0)

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        if beta == 0:
            return kl(p, q)
        if beta == 1:
            return kl(q, p)
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_forward_kl":
        return kl(p, [a * pi + (1 - a) * qi for pi, qi in zip(p, q)])
    if name == "skew_reverse_kl":
        return kl(q, [a * qi + (1 - a) * pi for pi, qi in zip(p, q)])
    if name == "tvd":
        return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
    raise AssertionError(name)


PARAMS = {
    "jsd": [dict(beta=0.5), dict(beta=0.1), dict(beta=0.9)],
    "skew_forward_kl": [dict(a=0.1), dict(a=0.5)],
    "skew_reverse_kl": [dict(a=0.1), dict(a=0.5)],
}
CASES = [(n, kw, t) for n in DIVERGENCES for kw in PARAMS.get(n, [{}]) for t in (1.0, 2.0)]


@pytest.mark.parametrize("name,kw,temp", CASES)
def test_divergence_matches_float64(batch, name, kw, temp):
    s, t, labels = batch  # fp32 logits of clearly different distributions
    mask = labels != IGNORE_INDEX
    got = divergence_from_logits(name, s, t, mask, temp, beta=kw.get("beta", 0.5), skew_alpha=kw.get("a", 0.1))
    want = table(lambda b, i: ref_div(name, s[b, i].double().tolist(), t[b, i].double().tolist(), temp, **kw), mask)
    assert got.dtype == torch.float32 and got.shape == (B, L)
    assert float(want[mask].min()) > 1e-3  # not a near-zero value: relative error is meaningful
    assert rel_err(got, want) <= 1e-6
    assert (got[~mask] == 0).all() and (got >= 0).all()


def test_divergence_from_logprobs_and_dispatcher(batch):
    s, t, _ = batch
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    assert torch.equal(divergence("forward_kl", lq, lp), forward_kl(s, t, torch.ones(B, L, dtype=torch.bool)))
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence("kl", lq, lp)
    with pytest.raises(ValueError, match="beta"):
        divergence("jsd", lq, lp, beta=1.5)
    with pytest.raises(ValueError, match="skew alpha"):
        divergence("skew_forward_kl", lq, lp, skew_alpha=1.0)


def test_jsd_limits(batch):
    """TRL convention: beta=0 is forward KL, beta=1 reverse KL; in between, JSD/beta -> forward KL
    as beta -> 0 and JSD/(1-beta) -> reverse KL as beta -> 1."""
    s, t, _ = batch
    lq, lp = torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1)
    fkl, rkl = divergence("forward_kl", lq, lp), divergence("reverse_kl", lq, lp)
    assert torch.equal(divergence("jsd", lq, lp, beta=0.0), fkl)
    assert torch.equal(divergence("jsd", lq, lp, beta=1.0), rkl)
    errs = [
        (
            rel_err(divergence("jsd", lq, lp, beta=eps) / eps, fkl),
            rel_err(divergence("jsd", lq, lp, beta=1 - eps) / eps, rkl),
        )
        for eps in (1e-4, 1e-6)
    ]
    assert max(errs[1]) <= 1e-3  # first-order convergence: the error shrinks like beta (resp. 1 - beta)
    assert errs[1][0] < errs[0][0] / 50 and errs[1][1] < errs[0][1] / 50
    sym = divergence("jsd", lq, lp, beta=0.5)
    assert (sym <= math.log(2)).all()  # the Jensen-Shannon divergence is at most log 2
    assert torch.allclose(sym, divergence("jsd", lp, lq, beta=0.5))  # symmetric at beta = 1/2


def test_skew_kl_limits(batch):
    s, t, _ = batch
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    assert torch.equal(divergence("skew_forward_kl", lq, lp, skew_alpha=0.0), divergence("forward_kl", lq, lp))
    assert torch.equal(divergence("skew_reverse_kl", lq, lp, skew_alpha=0.0), divergence("reverse_kl", lq, lp))
    a = 0.3  # bounded by -log(a), below the plain KLs
    for name, plain in (("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")):
        skew = divergence(name, lq, lp, skew_alpha=a)
        assert (skew <= -math.log(a)).all() and (skew < divergence(plain, lq, lp)).all()


def test_tvd_range_and_symmetry(batch):
    s, t, _ = batch
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    d = divergence("tvd", lq, lp)
    assert ((d > 0) & (d < 1)).all() and torch.equal(d, divergence("tvd", lp, lq))
    assert divergence("tvd", lq, lq.clone()).abs().max() == 0


@pytest.mark.parametrize("name", DIVERGENCES)
def test_each_divergence_zero_when_equal_and_masked_rows_clean(batch, name):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    assert divergence_from_logits(name, s, s.clone(), mask, 1.5).abs().max() < 1e-6
    s, t = s.clone(), t.clone()
    s[~mask], t[~mask] = float("-inf"), float("nan")  # masked rows may hold anything
    x = s.clone().requires_grad_()
    out = divergence_from_logits(name, x, t, mask, 2.0, beta=0.3, skew_alpha=0.2)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out[~mask] == 0).all()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all() and (x.grad[mask].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_distillation_loss_t2_scaling_each_divergence(batch, name):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    for temp in (1.0, 3.0):
        total, _, parts = distillation_loss(s, labels, teacher_logits=t, alpha=0.25, temperature=temp, divergence=name)
        d = divergence_from_logits(name, s, t, mask, temp).sum()
        assert torch.allclose(parts["kd"], d)
        assert torch.allclose(total, 0.25 * temp**2 * d + 0.75 * parts["ce"])


def test_sparse_target_loss_matches_float64(batch):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, L, K), generator=g)
    probs = torch.rand(B, L, K, generator=g) / K  # sums to < 1: an un-modelled tail
    probs[0, 3, :2] = 0.0  # padding entries
    for temp in (1.0, 2.0):
        got = sparse_target_loss(s, ids, probs, mask, temp)

        def ref(b, i, temp=temp):
            q = ref_softmax(s[b, i].double().tolist(), temp)
            return -sum(float(probs[b, i, j]) * math.log(q[int(ids[b, i, j])]) for j in range(K) if probs[b, i, j] > 0)

        assert rel_err(got, table(ref, mask)) <= 1e-6 and (got[~mask] == 0).all()


def test_sparse_target_loss_dense_ids_none_equals_cross_entropy_form(batch):
    s, t, labels = batch
    mask = labels != IGNORE_INDEX
    p = torch.softmax(t / 2.0, -1)
    dense = sparse_target_loss(s, None, p, mask, 2.0)
    ids = torch.arange(V).expand(B, L, V)
    assert torch.allclose(dense, sparse_target_loss(s, ids, p, mask, 2.0))
    # cross-entropy = forward KL + teacher entropy
    ent = -(p * p.log()).sum(-1)
    assert torch.allclose(dense[mask], (forward_kl(s, t, mask, 2.0) + ent)[mask], rtol=1e-5)


def test_sampled_targets_are_unbiased():
    """pi = counts / n of n teacher draws: the loss (linear in pi) averages to the dense cross-entropy."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, V, generator=g)
    p = torch.softmax(torch.randn(V, generator=g) * 2, -1)
    n, draws = 8, 20000
    samples = torch.multinomial(p, n * draws, replacement=True, generator=g).view(draws, n)
    ids, probs = samples, torch.full((draws, n), 1.0 / n)  # repeated ids simply add up
    x = s.expand(draws, V).clone().requires_grad_()
    est = sparse_target_loss(x, ids, probs, torch.ones(draws, dtype=torch.bool))
    est.mean().backward()
    dense_x = s.clone().requires_grad_()
    dense = -(p * torch.log_softmax(dense_x, -1)).sum()
    dense.backward()
    assert abs(float(est.mean().detach()) - float(dense.detach())) < 0.02 * float(dense.detach())
    grad_mean = x.grad.sum(0) * 1.0  # d mean / d x_i summed over rows = average gradient
    assert (grad_mean - dense_x.grad[0]).abs().max() < 0.01


def test_topk_target_probs_and_distillation_loss_with_targets(batch):
    s, t, labels = batch
    ids, lps = topk_of(t)
    lps[1, 2, -2:] = float("-inf")
    lps[0, 4, :] = float("-inf")  # an empty row
    pi = topk_target_probs(lps, 2.0)
    assert torch.allclose(pi[1, 2, :-2].sum(), torch.tensor(1.0)) and (pi[1, 2, -2:] == 0).all()
    assert (pi[0, 4] == 0).all()
    a = distillation_loss(s, labels, teacher_ids=ids, teacher_logprobs=lps, alpha=0.4, temperature=2.0)
    b = distillation_loss(s, labels, target_ids=ids, target_probs=pi, alpha=0.4, temperature=2.0)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[2]["kd"], b[2]["kd"])
    with pytest.raises(ValueError, match="forward_kl"):
        distillation_loss(s, labels, target_ids=ids, target_probs=pi, divergence="jsd")


# ---------------------------------------------------------------------------------------------
# -inf logits (a padded or masked vocabulary): issue #13


def ref_div64(name, s, t, temp, beta=0.5, a=0.1):
    """``[...]`` divergences of float64 logits ``[..., V]``, all *finite*: plain formulas, differentiable.

    The autograd twin of :func:`ref_div` (a gradient reference); on finite log-probabilities none
    of the ``0 log 0`` care of the library is needed.
    """
    lq, lp = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
    q, p = lq.exp(), lp.exp()

    def kl(x, lx, ly):
        return (x * (lx - ly)).sum(-1)

    def log_mix(w, lx, ly):  # log(w x + (1 - w) y), 0 < w < 1
        return torch.logaddexp(lx + math.log(w), ly + math.log1p(-w))

    if name == "forward_kl" or name == "jsd" and beta == 0 or name == "skew_forward_kl" and a == 0:
        return kl(p, lp, lq)
    if name == "reverse_kl" or name == "jsd" and beta == 1 or name == "skew_reverse_kl" and a == 0:
        return kl(q, lq, lp)
    if name == "jsd":
        lm = log_mix(beta, lp, lq)
        return beta * kl(p, lp, lm) + (1 - beta) * kl(q, lq, lm)
    if name == "skew_forward_kl":
        return kl(p, lp, log_mix(a, lp, lq))
    if name == "skew_reverse_kl":
        return kl(q, lq, log_mix(a, lq, lp))
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise AssertionError(name)


INF_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"a": 0.1}),
    ("skew_forward_kl", {"a": 0.0}),
    ("skew_reverse_kl", {"a": 0.3}),
    ("skew_reverse_kl", {"a": 0.0}),
    ("tvd", {}),
]


def kl_kind(name, kw):
    """ "fkl" / "rkl" for the divergences that *are* a plain KL (unbounded), else None."""
    if name == "forward_kl" or name == "jsd" and kw.get("beta") == 0 or name == "skew_forward_kl" and kw.get("a") == 0:
        return "fkl"
    if name == "reverse_kl" or name == "jsd" and kw.get("beta") == 1 or name == "skew_reverse_kl" and kw.get("a") == 0:
        return "rkl"
    return None


def _logits_and_grad(name, kw, s, t, temp):
    x = s.clone().requires_grad_()
    out = divergence_from_logits(name, x, t, None, temp, beta=kw.get("beta", 0.5), skew_alpha=kw.get("a", 0.1))
    out.sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("name,kw", INF_CASES)
def test_neginf_in_both_models_is_outside_the_support(name, kw, temp):
    """Entries -inf in both models: finite value and gradient, those of the float64 reference with them removed."""
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(2, 8, generator=g) * 2, torch.randn(2, 8, generator=g) * 2
    s[:, 5] = t[:, 5] = float("-inf")  # the reproduction
    s[1, 0] = t[1, 0] = float("-inf")  # and one in a single row
    out, grad = _logits_and_grad(name, kw, s, t, temp)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    for r in range(2):
        keep = torch.isfinite(s[r])
        xs = s[r, keep].double().requires_grad_()
        want = ref_div64(name, xs, t[r, keep].double(), temp, **kw)
        want.backward()
        want = float(want.detach())
        assert abs(float(out[r]) - want) <= 1e-6 * max(1.0, want)
        assert (grad[r, ~keep] == 0).all()
        assert (grad[r, keep].double() - xs.grad).abs().max() <= 1e-6 * max(1.0, float(xs.grad.abs().max()))


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("name,kw", INF_CASES)
def test_neginf_in_one_model_only(name, kw, side):
    """A zero probability in one model only: the limit of a very negative finite logit, or a genuine +inf.

    Forward KL with teacher mass where the student is -inf (reverse KL: student mass where the
    teacher is -inf) is infinite and says so; every other combination is finite, with a finite
    gradient (no NaN), equal to the float64 reference with the -inf logit replaced by -1e5.
    """
    g = torch.Generator().manual_seed(14)
    s, t = torch.randn(3, 8, generator=g) * 2, torch.randn(3, 8, generator=g) * 2
    (s if side == "student" else t)[:, 3] = float("-inf")
    infinite = kl_kind(name, kw) == ("fkl" if side == "student" else "rkl")
    out, grad = _logits_and_grad(name, kw, s, t, 1.5)
    if infinite:
        assert (out == float("inf")).all()  # not hidden, and not NaN
        if kl_kind(name, kw) == "fkl":  # the gradient of -sum p log q stays q - p (over T)
            want = (torch.softmax(s / 1.5, -1) - torch.softmax(t / 1.5, -1)) / 1.5
            assert torch.allclose(grad, want, atol=1e-6)
        return
    xs = s.double().nan_to_num(neginf=-1e5).requires_grad_()
    want = ref_div64(name, xs, t.double().nan_to_num(neginf=-1e5), 1.5, **kw)
    want.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    want = want.detach()
    assert (out.double() - want).abs().max() <= 1e-6 * max(1.0, float(want.abs().max()))
    assert (grad.double() - xs.grad).abs().max() <= 1e-6
    if side == "student":
        assert (grad[:, 3] == 0).all()


def test_neginf_everywhere_distillation_loss_and_sparse():
    """distillation_loss (dense teacher, top-k, dense targets) with a -inf vocabulary entry in both models."""
    g = torch.Generator().manual_seed(15)
    s, t = torch.randn(B, L, V, generator=g) * 2, torch.randn(B, L, V, generator=g) * 2
    s[..., 7] = t[..., 7] = float("-inf")
    labels = torch.randint(0, 7, (B, L), generator=g)  # the same ids with entry 7 removed
    labels[0, 0] = IGNORE_INDEX
    keep = torch.ones(V, dtype=torch.bool)
    keep[7] = False
    ids, lps = topk_of(t)
    for kw in (
        {"teacher_logits": t, "divergence": "jsd", "beta": 0.7},
        {"teacher_ids": ids, "teacher_logprobs": lps},
        {"target_probs": torch.softmax(t, -1)},
        {"teacher_logits": t, "divergence": "reverse_kl"},
    ):
        x = s.clone().requires_grad_()
        total = distillation_loss(x, labels, alpha=0.5, temperature=1.0, **kw)[0]
        total.backward()
        ref_kw = {k: (v[..., keep] if k in ("teacher_logits", "target_probs") else v) for k, v in kw.items()}
        if "teacher_ids" in kw:  # the top-k ids, in the support's numbering
            ref_kw["teacher_ids"] = ids - (ids > 7).long()
        xs = s[..., keep].double().requires_grad_()
        want = distillation_loss(xs, labels, alpha=0.5, temperature=1.0, **ref_kw)[0]
        want.backward()
        total, want = total.detach(), want.detach()
        assert torch.isfinite(total) and abs(float(total) - float(want)) <= 1e-6 * float(want)
        assert torch.isfinite(x.grad).all() and (x.grad[..., 7] == 0).all()
        assert (x.grad[..., keep].double() - xs.grad).abs().max() <= 1e-6
