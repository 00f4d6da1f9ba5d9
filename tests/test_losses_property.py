"""Property tests (Hypothesis) of potstill.losses: -inf vocabulary entries, extreme logits, masks, temperatures.

Random logits up to +-1e4 (float32 or float64), with ``-inf`` entries shared by both models (a padded
or masked vocabulary), ``-inf`` in one model only where the divergence stays finite, garbage in
masked rows / ``ignore_index`` positions, temperatures in [0.5, 4], every divergence, on full
logits and chunked (dense teacher, top-k / sampled / store targets), and ULD. Every result must be
finite and match a float64 reference computed *on the support*: the entries -inf in both models
removed, and an entry -inf in one model only replaced by a logit so negative that its float64
probability is exactly 0 (the limit the library takes). Values and gradients are compared.

Tolerances scale with the inputs' precision and size: ``TOL * eps(dtype) * scale`` with
``scale = 1 + max|finite logit| / T`` (the absolute error of a log-softmax in that precision),
relative to ``1 + |reference|``.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from tests.test_losses import kl_kind, ref_div64

from potstill.losses import (
    DIVERGENCES,
    IGNORE_INDEX,
    chunked_distillation_loss,
    chunked_sparse_target_loss,
    distillation_loss,
    divergence_from_logits,
    topk_target_probs,
)
from potstill.losses.uld import uld_distance

NEG, NAN = float("-inf"), float("nan")
FAR = -1e6  # a logit whose float64 probability is exactly 0 (|logit| / T >= 2.5e5 > 745 + log V)
TOL = 16.0  # in units of eps(dtype) * scale; the worst case seen in 4x the examples used a tenth of it

# POTSTILL_PROPERTY_SCALE=10 runs ten times the examples (a thorough run); the default keeps the file fast.
SCALE = float(os.environ.get("POTSTILL_PROPERTY_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


LOGITS = st.floats(-1e4, 1e4, allow_nan=False, width=32)
TEMPS = st.floats(0.5, 4.0)
DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def divergence_specs(draw, name):
    """``(name, kw)``: kw as :func:`tests.test_losses.ref_div64` takes it (``beta``, ``a``), end points included."""
    if name == "jsd":
        return name, {"beta": draw(st.sampled_from([0.0, 1.0]) | st.floats(0.01, 0.99))}
    if name.startswith("skew_"):
        return name, {"a": draw(st.just(0.0) | st.floats(0.01, 0.9))}
    return name, {}


def lib_kw(kw):
    return {"beta": kw.get("beta", 0.5), "skew_alpha": kw.get("a", 0.1)}


def one_sided(name, kw) -> str:
    """The models that may be -inf alone at an entry with the divergence still finite ("s" student, "t" teacher).

    A plain forward KL is infinite where the teacher has mass and the student none (and a reverse
    KL the other way round); the bounded divergences are finite either way.
    """
    return {"fkl": "t", "rkl": "s", None: "st"}[kl_kind(name, kw)]


def entry_kinds(draw, n, v, sides):
    """Per entry: "f" finite in both, "b" -inf in both, "s" / "t" -inf in that model only; each model keeps
    a finite entry in every row."""
    kinds = draw(st.lists(st.sampled_from("fffb" + sides), min_size=n * v, max_size=n * v))
    rows = [kinds[r * v : (r + 1) * v] for r in range(n)]
    for row in rows:
        if not any(k in "ft" for k in row) or not any(k in "fs" for k in row):
            row[0] = "f"
    return rows


def apply_kinds(x: torch.Tensor, kinds, model: str) -> torch.Tensor:
    """-inf where ``kinds`` says ``model`` ("s" or "t") is -inf."""
    x = x.clone()
    for r, row in enumerate(kinds):
        for c, k in enumerate(row):
            if k == "b" or k == model:
                x[r, c] = NEG
    return x


def scale_of(*xs: torch.Tensor, temp: float) -> float:
    finite = torch.cat([x[torch.isfinite(x)].double().abs().flatten() for x in xs])
    return 1.0 + (float(finite.max()) if finite.numel() else 0.0) / temp


@contextmanager
def noted(case):
    """Report ``case`` (printed in full) with a failing example only: formatting tensors costs time."""
    try:
        yield
    except AssertionError:
        with torch.printoptions(precision=10, threshold=10_000):
            note(repr(case))
        raise


def close(got, want, tol, what=""):
    """``|got - want| <= tol * (1 + max|want|)``, elementwise, both finite."""
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    assert torch.isfinite(got).all(), f"{what}: not finite: {got}"
    err, bound = float((got - want).abs().max()), tol * (1.0 + float(want.abs().max()))
    assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g} (got {got}, want {want})"


def support_reference(name, kw, s, t, temp):
    """Float64 value and student-logit gradient of one row, on its support: ``(want, grad [V], both [V])``."""
    both = torch.isneginf(s) & torch.isneginf(t)
    xs = s[~both].double().nan_to_num(neginf=FAR).requires_grad_()
    want = ref_div64(name, xs, t[~both].double().nan_to_num(neginf=FAR), temp, **kw)
    (g,) = torch.autograd.grad(want, xs)
    grad = torch.zeros(s.shape[-1], dtype=torch.float64)
    grad[~both] = g
    return float(want.detach()), grad, both


# ---------------------------------------------------------------------------------------------
# Full logits: divergence_from_logits, every divergence, masks with garbage rows


@st.composite
def full_logit_cases(draw, name):
    name, kw = draw(divergence_specs(name))
    n, v = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    dtype = draw(DTYPES)
    kinds = entry_kinds(draw, n, v, one_sided(name, kw))
    s = torch.tensor(draw(st.lists(LOGITS, min_size=n * v, max_size=n * v)), dtype=dtype).view(n, v)
    t = torch.tensor(draw(st.lists(LOGITS, min_size=n * v, max_size=n * v)), dtype=dtype).view(n, v)
    s, t = apply_kinds(s, kinds, "s"), apply_kinds(t, kinds, "t")
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    garbage = draw(st.sampled_from(["none", "neginf", "nan"]))  # what masked rows hold
    if garbage != "none":
        s[~mask], t[~mask] = NEG, (NEG if garbage == "neginf" else NAN)
    if mask.all() and draw(st.booleans()):
        mask = None
    return name, kw, s, t, mask, draw(TEMPS)


@pytest.mark.parametrize("name", DIVERGENCES)
@examples(20)
@given(data=st.data())
def test_divergence_from_logits_finite_and_equal_to_the_support_reference(name, data):
    name, kw, s, t, mask, temp = case = data.draw(full_logit_cases(name))
    with noted(case):
        check_full_logits(name, kw, s, t, mask, temp)


def check_full_logits(name, kw, s, t, mask, temp):
    x = s.clone().requires_grad_()
    out = divergence_from_logits(name, x, t, mask, temp, **lib_kw(kw))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    eps = torch.finfo(s.dtype).eps
    for r in range(s.shape[0]):
        if mask is not None and not mask[r]:
            assert out[r] == 0 and (x.grad[r] == 0).all()
            continue
        want, grad, both = support_reference(name, kw, s[r], t[r], temp)
        tol = TOL * eps * scale_of(s[r], t[r], temp=temp)
        close(out[r].detach(), want, tol, f"{name} {kw} value, row {r}")
        assert (x.grad[r, both] == 0).all()
        close(x.grad[r] * temp, grad * temp, tol, f"{name} {kw} gradient * T, row {r}")


# ---------------------------------------------------------------------------------------------
# From hidden states: chunked_distillation_loss (dense teacher) and distillation_loss, ignore_index labels
#
# W = I, so the logits are the hidden states plus the bias exactly, and -inf entries come from the
# bias (the way a padded or masked output layer makes them): per vocabulary entry, not per row.


@st.composite
def head_cases(draw, name="forward_kl", sides=None):
    """A student head over ``v + pad`` rows and a teacher head over ``v + pad_t`` rows, -inf bias entries."""
    name, kw = draw(divergence_specs(name))
    n, v = draw(st.integers(1, 6)), draw(st.integers(2, 9))
    pad, pad_t = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dtype = draw(DTYPES)
    kinds = entry_kinds(draw, 1, v, one_sided(name, kw) if sides is None else sides)
    b = apply_kinds(torch.zeros(1, v, dtype=dtype), kinds, "s")[0]
    bt = apply_kinds(torch.zeros(1, v, dtype=dtype), kinds, "t")[0]
    pad_bias = draw(st.sampled_from([0.0, NEG]))  # padding rows of the output layer: live or masked
    b = torch.cat([b, torch.full((pad,), pad_bias, dtype=dtype)])
    bt = torch.cat([bt, torch.full((pad_t,), draw(st.sampled_from([0.0, NEG])), dtype=dtype)])
    h = torch.tensor(draw(st.lists(LOGITS, min_size=n * (v + pad), max_size=n * (v + pad))), dtype=dtype)
    ht = torch.tensor(draw(st.lists(LOGITS, min_size=n * (v + pad_t), max_size=n * (v + pad_t))), dtype=dtype)
    finite = [c for c in range(v + pad) if math.isfinite(b[c])]  # labels never name a -inf (CE = +inf) entry
    labels = torch.tensor([draw(st.sampled_from(finite + [IGNORE_INDEX])) for _ in range(n)])
    return {
        "name": name,
        "kw": kw,
        "v": v,
        "h": h.view(n, v + pad),
        "b": b,
        "ht": ht.view(n, v + pad_t),
        "bt": bt,
        "y": labels,
        "temp": draw(TEMPS),
        "alpha": draw(st.floats(0.0, 1.0)),
        "chunk": draw(st.integers(1, 4)),
    }


def head_reference(c):
    """Float64 ``(loss, kd_sum, ce_sum)`` and the gradients of ``(h, W, b)`` on the support (W = I)."""
    v, temp = c["v"], c["temp"]
    b64, bt64 = c["b"].double(), c["bt"].double()
    both = torch.isneginf(b64[:v]) & torch.isneginf(bt64[:v])
    cols = torch.cat([(~both).nonzero().squeeze(1), torch.arange(v, len(b64))])  # the student's support
    leaves = [
        c["h"].double().clone().requires_grad_(),
        torch.eye(len(b64), dtype=torch.float64).requires_grad_(),
        b64.clone().requires_grad_(),
    ]
    z = (leaves[0] @ leaves[1].T + leaves[2].nan_to_num(neginf=FAR))[:, cols]
    zt = (c["ht"].double() + bt64.nan_to_num(neginf=FAR))[:, :v][:, ~both]
    k = int((~both).sum())
    keep = c["y"] != IGNORE_INDEX
    y = torch.searchsorted(cols, c["y"][keep])
    kd = ref_div64(c["name"], z[keep, :k], zt[keep], temp, **c["kw"]).sum()
    ce = F.cross_entropy(z[keep], y, reduction="sum")
    loss = c["alpha"] * temp**2 * kd + (1 - c["alpha"]) * ce
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), kd.detach(), ce.detach(), grads


@pytest.mark.parametrize("name", DIVERGENCES)
@examples(12)
@given(data=st.data())
def test_chunked_and_full_logit_loss_finite_and_equal_to_the_support_reference(name, data):
    c = data.draw(head_cases(name))
    with noted(c):
        check_heads(c)


def check_heads(c):
    n_rows = c["h"].shape[0]
    loss_ref, kd_ref, ce_ref, grads_ref = head_reference(c)
    w = torch.eye(len(c["b"]), dtype=c["h"].dtype)
    leaves = [c["h"].clone().requires_grad_(), w.clone().requires_grad_(), c["b"].clone().requires_grad_()]
    kw = dict(alpha=c["alpha"], temperature=c["temp"], vocab_size=c["v"], divergence=c["name"], **lib_kw(c["kw"]))
    loss, n, parts = chunked_distillation_loss(
        leaves[0],
        leaves[1],
        c["y"],
        bias=leaves[2],
        teacher_hidden=c["ht"],
        teacher_weight=torch.eye(len(c["bt"]), dtype=c["ht"].dtype),
        teacher_bias=c["bt"],
        chunk_size=c["chunk"],
        **kw,
    )
    grads = torch.autograd.grad(loss, leaves)
    full = [x.detach().clone().requires_grad_() for x in leaves]
    f_loss, f_n, f_parts = distillation_loss(
        full[0] @ full[1].T + full[2], c["y"], teacher_logits=c["ht"] + c["bt"], **kw
    )
    f_grads = torch.autograd.grad(f_loss, full)
    assert int(n) == int(f_n) == int((c["y"] != IGNORE_INDEX).sum())
    eps = torch.finfo(c["h"].dtype).eps
    tol = TOL * eps * scale_of(c["h"] + c["b"], c["ht"] + c["bt"], temp=min(1.0, c["temp"])) * n_rows
    t2 = c["temp"] ** 2
    teacher_neginf = torch.cat([torch.isneginf(c["bt"][: c["v"]]), torch.ones(len(c["b"]) - c["v"], dtype=torch.bool)])
    masked = torch.isneginf(c["b"]) & teacher_neginf  # -inf in both, or a -inf padded (CE only) student row
    for what, (lo, pa, gr) in {"chunked": (loss, parts, grads), "full": (f_loss, f_parts, f_grads)}.items():
        close(lo.detach(), loss_ref, tol * max(1.0, t2), f"{what} loss")
        close(pa["kd"], kd_ref, tol, f"{what} kd")
        close(pa["ce"], ce_ref, tol, f"{what} ce")
        for name, g, g_ref in zip(("h", "W", "b"), gr, grads_ref):
            close(g, g_ref, tol * max(1.0, c["temp"]), f"{what} grad {name}")
        assert (gr[2][masked] == 0).all() and (gr[1][masked] == 0).all()  # the masked rows of b and W


# ---------------------------------------------------------------------------------------------
# Sparse teacher targets from hidden states: store (dense), top-k, sampled


@st.composite
def sparse_cases(draw):
    c = draw(head_cases(sides=""))  # -inf only in both heads: a target has no mass where the student is -inf
    # The fused T = 1 path computes q = softmax(z)[:v] / S (S: the mass of the first v rows), which needs S to be a
    # normal float: padded rows may not sit more than ~87 nats (float32) above every vocabulary logit. Keep them
    # within 60.
    v, h, b = c["v"], c["h"], c["b"]
    top = (h[:, :v] + b[:v]).max(-1, keepdim=True).values
    c["h"] = torch.cat([h[:, :v], torch.minimum(h[:, v:], top + 60)], -1)
    c["target"] = draw(st.sampled_from(["dense", "arange", "topk", "sampled"]))
    c["temp"] = draw(st.sampled_from([1.0]) | TEMPS)  # T = 1 takes the fused path
    c["k"] = draw(st.integers(1, c["v"]))
    c["seed"] = draw(st.integers(0, 2**16))
    return c


def sparse_targets(c):
    v, temp = c["v"], c["temp"]
    t_logits = (c["ht"] + c["bt"])[:, :v]
    n = t_logits.shape[0]
    if c["target"] in ("dense", "arange"):
        probs = torch.softmax(t_logits.double() / temp, -1).to(t_logits.dtype)
        return (None if c["target"] == "dense" else torch.arange(v).expand(n, v)), probs
    if c["target"] == "topk":  # rows shorter than k end in -inf (padding) entries
        lp, ids = torch.log_softmax(t_logits, -1).topk(c["k"], -1)
        return ids, topk_target_probs(lp, temp).to(t_logits.dtype)
    g = torch.Generator().manual_seed(c["seed"])  # sampled: counts / k of k teacher draws
    ids = torch.multinomial(torch.softmax(t_logits.double() / temp, -1), c["k"], replacement=True, generator=g)
    return ids, torch.full((n, c["k"]), 1.0 / c["k"], dtype=t_logits.dtype)


@examples(60)
@given(sparse_cases())
def test_chunked_sparse_targets_finite_and_equal_to_the_support_reference(c):
    with noted(c):
        check_sparse(c)


def check_sparse(c):
    v, temp, alpha = c["v"], c["temp"], c["alpha"]
    ids, probs = sparse_targets(c)
    leaves = [
        c["h"].double().clone().requires_grad_(),
        torch.eye(len(c["b"]), dtype=torch.float64).requires_grad_(),
        c["b"].double().clone().requires_grad_(),
    ]
    z = leaves[0] @ leaves[1].T + leaves[2]
    keep = c["y"] != IGNORE_INDEX
    support = torch.isfinite(z[0, :v].detach())  # -inf bias entries: the same in every row
    lq = torch.log_softmax(z[:, :v][:, support] / temp, -1)
    lq = torch.zeros(z.shape[0], v, dtype=torch.float64).masked_scatter(support.expand_as(z[:, :v]), lq)
    pi = probs.double()
    idx = torch.arange(v).expand_as(pi) if ids is None else ids
    lq_t = lq.gather(1, idx)
    terms = torch.where(pi > 0, pi * (torch.where(pi > 0, pi, 1.0).log() - lq_t), 0.0)
    kd = terms[keep].sum()
    cols = torch.cat([support.nonzero().squeeze(1), torch.arange(v, len(c["b"]))])
    ce = F.cross_entropy(z[keep][:, cols], torch.searchsorted(cols, c["y"][keep]), reduction="sum")
    loss_ref = alpha * temp**2 * kd + (1 - alpha) * ce
    grads_ref = torch.autograd.grad(loss_ref, leaves)

    w = torch.eye(len(c["b"]), dtype=c["h"].dtype)
    got_leaves = [c["h"].clone().requires_grad_(), w.requires_grad_(), c["b"].clone().requires_grad_()]
    loss, _, parts = chunked_distillation_loss(
        got_leaves[0],
        got_leaves[1],
        c["y"],
        bias=got_leaves[2],
        target_ids=ids,
        target_probs=probs,
        alpha=alpha,
        temperature=temp,
        vocab_size=v,
        chunk_size=c["chunk"],
    )
    grads = torch.autograd.grad(loss, got_leaves)
    eps = torch.finfo(c["h"].dtype).eps
    tol = TOL * eps * scale_of(c["h"] + c["b"], temp=min(1.0, temp)) * c["h"].shape[0]
    close(loss.detach(), loss_ref.detach(), tol * max(1.0, temp**2), "loss")
    close(parts["kd"], kd.detach(), tol, "kd")
    for name, g, g_ref in zip(("h", "W", "b"), grads, grads_ref):
        close(g, g_ref, tol * max(1.0, temp), f"grad {name}")

    sub = chunked_sparse_target_loss(
        c["h"], w.detach(), ids, probs, keep, bias=c["b"], temperature=temp, vocab_size=v, chunk_size=c["chunk"]
    )
    close(sub, -(pi * torch.where(pi > 0, lq_t, 0.0))[keep].sum().detach(), tol, "chunked_sparse_target_loss")


# ---------------------------------------------------------------------------------------------
# ULD: a -inf entry is a zero probability, the same as a removed (zero-padded) one


@st.composite
def uld_cases(draw):
    n, vs, vt = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(DTYPES)

    def logits(v):
        x = torch.tensor(draw(st.lists(LOGITS, min_size=n * v, max_size=n * v)), dtype=dtype).view(n, v)
        neg = torch.tensor(draw(st.lists(st.booleans(), min_size=n * v, max_size=n * v))).view(n, v)
        neg[:, 0] = False  # one finite entry per row
        return x.masked_fill(neg, NEG)

    return logits(vs), logits(vt), draw(TEMPS)


@examples(50)
@given(uld_cases())
def test_uld_with_neginf_entries_equals_the_support_reference(case):
    s, t, temp = case
    x = s.clone().requires_grad_()
    got = uld_distance(x, t, temp)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(x.grad).all() and (x.grad[torch.isneginf(s)] == 0).all()
    eps = torch.finfo(s.dtype).eps
    for r in range(s.shape[0]):
        ps = torch.softmax(s[r][torch.isfinite(s[r])].double() / temp, -1).sort(descending=True).values
        pt = torch.softmax(t[r][torch.isfinite(t[r])].double() / temp, -1).sort(descending=True).values
        width = max(len(ps), len(pt))
        want = (F.pad(ps, (0, width - len(ps))) - F.pad(pt, (0, width - len(pt)))).abs().sum()
        close(got[r].detach(), want, TOL * eps * scale_of(s[r], t[r], temp=temp), f"uld row {r}")
