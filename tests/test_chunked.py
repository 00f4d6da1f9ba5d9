"""The chunked distillation loss (from hidden states) == the full-logit loss, and the trainer using it."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.config import KDSettings
from potstill.losses import (
    DIVERGENCES,
    IGNORE_INDEX,
    chunked_distillation_loss,
    chunked_sparse_target_loss,
    distillation_loss,
    divergence,
    kd_value_and_grad,
    sparse_target_loss,
    topk_target_probs,
)
from potstill.losses.chunked import is_identity_ids

N, H, HT, V, K = 29, 12, 20, 41, 5
VARIANTS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.2}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"skew_alpha": 0.1}),
    ("skew_forward_kl", {"skew_alpha": 0.0}),
    ("skew_reverse_kl", {"skew_alpha": 0.3}),
    ("skew_reverse_kl", {"skew_alpha": 0.0}),
    ("tvd", {}),
]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def make(dtype=torch.float32, seed=0, n=N, vs=V + 3, vt=V + 7, bias=True):
    """Student (padded to vs rows) and teacher (vt rows) heads over a V-token vocabulary."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g, dtype=dtype)
    w = torch.randn(vs, H, generator=g, dtype=dtype) * 0.8
    b = torch.randn(vs, generator=g, dtype=dtype) * 0.5 if bias else None
    ht = torch.randn(n, HT, generator=g, dtype=dtype)
    wt = torch.randn(vt, HT, generator=g, dtype=dtype) * 0.8
    bt = torch.randn(vt, generator=g, dtype=dtype) * 0.5 if bias else None
    y = torch.randint(0, V, (n,), generator=g)
    y[[0, 3, 4, n - 1]] = IGNORE_INDEX
    return h, w, b, ht, wt, bt, y


def grads(loss, *xs):
    return torch.autograd.grad(loss, [x for x in xs if x is not None])


def full_and_chunked(name, kw, dtype=torch.float32, chunk=7, temp=2.0, alpha=0.3, bias=True, **make_kw):
    h, w, b, ht, wt, bt, y = make(dtype, bias=bias, **make_kw)
    leaves = [x.clone().requires_grad_() for x in (h, w)] + ([b.clone().requires_grad_()] if bias else [None])
    logits = leaves[0] @ leaves[1].T + (leaves[2] if bias else 0)
    t_logits = ht @ wt.T + (bt if bias else 0)
    ref, n_ref, parts_ref = distillation_loss(
        logits, y, teacher_logits=t_logits, alpha=alpha, temperature=temp, vocab_size=V, divergence=name, **kw
    )
    g_ref = grads(ref, *leaves)
    leaves2 = [None if x is None else x.detach().clone().requires_grad_() for x in leaves]
    got, n_got, parts = chunked_distillation_loss(
        leaves2[0],
        leaves2[1],
        y,
        bias=leaves2[2],
        teacher_hidden=ht,
        teacher_weight=wt,
        teacher_bias=bt,
        alpha=alpha,
        temperature=temp,
        vocab_size=V,
        divergence=name,
        chunk_size=chunk,
        **kw,
    )
    g_got = grads(got, *leaves2)
    assert int(n_got) == int(n_ref) == int((y != IGNORE_INDEX).sum())
    return (ref, parts_ref, g_ref), (got, parts, g_got)


# ---------------------------------------------------------------------------------------------
# Closed-form gradients vs autograd


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_closed_form_value_and_grad_vs_autograd_float64(name, kw):
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(9, V, generator=g, dtype=torch.float64) * 2).requires_grad_()
    log_p = torch.log_softmax(torch.randn(9, V, generator=g, dtype=torch.float64) * 2, -1)
    ref = divergence(name, torch.log_softmax(s, -1), log_p, **kw)
    (g_ref,) = torch.autograd.grad(ref.sum(), s)
    val, g_got = kd_value_and_grad(name, torch.log_softmax(s.detach(), -1), log_p.clone(), **kw)
    assert rel(val, ref) <= 1e-12 and rel(g_got, g_ref) <= 1e-10


# ---------------------------------------------------------------------------------------------
# Chunked == full logits


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_chunked_equals_full_float64_exactly(name, kw):
    (ref, pr, gr), (got, pg, gg) = full_and_chunked(name, kw, torch.float64)
    assert rel(got, ref) <= 1e-12 and rel(pg["kd"], pr["kd"]) <= 1e-12 and rel(pg["ce"], pr["ce"]) <= 1e-12
    for a, b in zip(gg, gr):
        assert rel(a, b) <= 1e-10


@pytest.mark.parametrize("name,kw", VARIANTS)
@pytest.mark.parametrize("chunk", [1, 7, N, 1000])
def test_chunked_equals_full_float32(name, kw, chunk):
    (ref, pr, gr), (got, pg, gg) = full_and_chunked(name, kw, torch.float32, chunk=chunk)
    assert got.dtype == torch.float32
    assert rel(got, ref) <= 1e-6 and rel(pg["kd"], pr["kd"]) <= 1e-6
    for a, b in zip(gg, gr):  # grads of h, W, b
        assert cosine(a, b) >= 0.99999 and rel(a, b) <= 1e-5


@pytest.mark.parametrize("name", DIVERGENCES)
def test_chunked_matches_float64_reference(name):
    """fp32 inputs, chunked: the loss and the KD/CE parts within 1e-6 of a float64 evaluation."""
    h, w, b, ht, wt, bt, y = make(torch.float32)
    mask = y != IGNORE_INDEX
    lq = torch.log_softmax((h.double() @ w.double().T + b.double())[:, :V] / 2.0, -1)
    lp = torch.log_softmax((ht.double() @ wt.double().T + bt.double())[:, :V] / 2.0, -1)
    kd = divergence(name, lq, lp, mask, beta=0.3, skew_alpha=0.2).sum()
    ce = torch.nn.functional.cross_entropy(h.double() @ w.double().T + b.double(), y, reduction="sum")
    total, _, parts = chunked_distillation_loss(
        h,
        w,
        y,
        bias=b,
        teacher_hidden=ht,
        teacher_weight=wt,
        teacher_bias=bt,
        alpha=0.3,
        temperature=2.0,
        vocab_size=V,
        divergence=name,
        beta=0.3,
        skew_alpha=0.2,
        chunk_size=6,
    )
    assert abs(float(parts["kd"]) - float(kd)) <= 1e-6 * float(kd)
    assert abs(float(parts["ce"]) - float(ce)) <= 1e-6 * float(ce)
    want = 0.3 * 4.0 * kd + 0.7 * ce
    assert abs(float(total) - float(want)) <= 1e-6 * float(want)


def test_padded_teacher_vocab_and_vocab_size():
    """Rows of either lm_head beyond the common vocabulary never reach the KD term."""
    h, w, b, ht, wt, bt, y = make(torch.float64)
    wt_pad = torch.cat([wt[:V], torch.randn(9, HT, dtype=torch.float64) * 50])
    bt_pad = torch.cat([bt[:V], torch.full((9,), 100.0, dtype=torch.float64)])
    kw = dict(bias=b, alpha=0.5, temperature=1.5, divergence="jsd", chunk_size=4)
    a = chunked_distillation_loss(
        h, w, y, teacher_hidden=ht, teacher_weight=wt[:V], teacher_bias=bt[:V], vocab_size=V, **kw
    )
    c = chunked_distillation_loss(
        h, w, y, teacher_hidden=ht, teacher_weight=wt_pad, teacher_bias=bt_pad, vocab_size=V, **kw
    )
    assert torch.equal(a[2]["kd"], c[2]["kd"]) and torch.equal(a[0], c[0])
    # without vocab_size, the smaller of the two heads (the teacher's V rows) bounds the KD term
    d = chunked_distillation_loss(h, w, y, teacher_hidden=ht, teacher_weight=wt[:V], teacher_bias=bt[:V], **kw)
    assert torch.allclose(a[0], d[0])


def test_ignore_index_everywhere_and_all_ignored():
    h, w, b, ht, wt, bt, y = make(torch.float64)
    keep = y != IGNORE_INDEX
    hh = h.clone().requires_grad_()
    full = chunked_distillation_loss(
        hh, w, y, bias=b, teacher_hidden=ht, teacher_weight=wt, vocab_size=V, divergence="tvd", chunk_size=5
    )
    (gh,) = torch.autograd.grad(full[0], hh)
    assert (gh[~keep] == 0).all() and (gh[keep].abs().sum(-1) > 0).all()
    # dropping the ignored rows beforehand changes nothing
    sub = chunked_distillation_loss(
        h[keep],
        w,
        y[keep],
        bias=b,
        teacher_hidden=ht[keep],
        teacher_weight=wt,
        vocab_size=V,
        divergence="tvd",
        chunk_size=5,
    )
    assert torch.allclose(full[0], sub[0]) and int(full[1]) == int(sub[1])
    none = torch.full_like(y, IGNORE_INDEX)
    hh = h.clone().requires_grad_()
    loss, n, parts = chunked_distillation_loss(hh, w, none, teacher_hidden=ht, teacher_weight=wt, divergence="jsd")
    loss.backward()
    assert float(loss) == 0 and int(n) == 0 and (hh.grad == 0).all() and float(parts["kd"]) == 0


def test_batched_shapes_and_sft_mode():
    h, w, b, ht, wt, bt, y = make(torch.float64, n=24)
    hb, yb = h.view(3, 8, H), y.view(3, 8)
    flat = chunked_distillation_loss(h, w, y, teacher_hidden=ht, teacher_weight=wt, vocab_size=V, chunk_size=5)
    batched = chunked_distillation_loss(
        hb, w, yb, teacher_hidden=ht.view(3, 8, HT), teacher_weight=wt, vocab_size=V, chunk_size=5
    )
    assert torch.allclose(flat[0], batched[0])
    sft, n, parts = chunked_distillation_loss(h, w, y, bias=b, chunk_size=5)
    want = torch.nn.functional.cross_entropy(h @ w.T + b, y, reduction="sum")
    assert torch.allclose(sft, want) and set(parts) == {"ce"}


def test_frozen_head_gets_no_gradient_and_single_backward():
    h, w, b, ht, wt, bt, y = make()
    hh = h.clone().requires_grad_()
    loss, _, _ = chunked_distillation_loss(hh, w, y, teacher_hidden=ht, teacher_weight=wt, vocab_size=V)
    loss.backward(retain_graph=True)
    assert hh.grad is not None and w.grad is None
    with pytest.raises(RuntimeError, match="single backward"):
        loss.backward()


def test_bf16_inputs():
    h, w, b, ht, wt, bt, y = make()
    args = [x.bfloat16() for x in (h, w, ht, wt)]
    hb, wb = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    loss, _, parts = chunked_distillation_loss(
        hb, wb, y, teacher_hidden=args[2], teacher_weight=args[3], vocab_size=V, divergence="reverse_kl", chunk_size=8
    )
    loss.backward()
    ref = distillation_loss(
        (args[0] @ args[1].T).float(),
        y,
        teacher_logits=(args[2] @ args[3].T).float(),
        vocab_size=V,
        divergence="reverse_kl",
    )
    assert loss.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    assert abs(float(loss) - float(ref[0])) <= 1e-2 * float(ref[0])


def test_bad_arguments():
    h, w, b, ht, wt, bt, y = make()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_distillation_loss(h, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="forward_kl"):
        chunked_distillation_loss(
            h, w, y, target_ids=y.view(-1, 1).clamp(min=0), target_probs=torch.ones(N, 1), divergence="tvd"
        )
    with pytest.raises(ValueError, match="not both"):
        chunked_distillation_loss(h, w, y, teacher_hidden=ht, teacher_weight=wt, target_probs=torch.ones(N, 1))
    with pytest.raises(ValueError, match="unknown divergence"):
        chunked_distillation_loss(h, w, y, teacher_hidden=ht, teacher_weight=wt, divergence="js")
    big = torch.full((N, 2), V + 1)
    with pytest.raises(ValueError, match="target_ids"):
        chunked_distillation_loss(h, w, y, target_ids=big, target_probs=torch.ones(N, 2), vocab_size=V)
    with pytest.raises(ValueError, match="target_ids"):
        chunked_sparse_target_loss(h, w, big, torch.ones(N, 2), y != IGNORE_INDEX, vocab_size=V)


# ---------------------------------------------------------------------------------------------
# Sparse targets from hidden states


def _topk(ht, wt, temp=2.0):
    lp, ids = torch.log_softmax(ht @ wt[:V].T, -1).topk(K, -1)
    lp[2, -2:] = float("-inf")  # a short row
    return ids, lp


@pytest.mark.parametrize("chunk", [1, 6, 1000])
def test_chunked_topk_equals_full_topk(chunk):
    h, w, b, ht, wt, bt, y = make()
    ids, lp = _topk(ht, wt)
    leaves = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    ref, _, pr = distillation_loss(
        leaves[0] @ leaves[1].T, y, teacher_ids=ids, teacher_logprobs=lp, alpha=0.4, temperature=2.0, vocab_size=V
    )
    gr = torch.autograd.grad(ref, leaves)
    leaves2 = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    got, _, pg = chunked_distillation_loss(
        leaves2[0],
        leaves2[1],
        y,
        target_ids=ids,
        target_probs=topk_target_probs(lp, 2.0),
        alpha=0.4,
        temperature=2.0,
        vocab_size=V,
        chunk_size=chunk,
    )
    gg = torch.autograd.grad(got, leaves2)
    assert rel(got, ref) <= 1e-6 and rel(pg["kd"], pr["kd"]) <= 1e-5
    for a, c in zip(gg, gr):
        assert cosine(a, c) >= 0.99999 and rel(a, c) <= 1e-5


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.0])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("vs", [V, V + 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_targets_fused_path_at_t1(alpha, dense, vs, dtype):
    """At T = 1 the sparse KD and CE gradients share softmax(z) (also with padded student rows)."""
    h, w, b, ht, wt, bt, y = make(dtype, vs=vs)
    g = torch.Generator().manual_seed(4)
    if dense:
        probs = torch.softmax(torch.randn(N, V, generator=g, dtype=dtype) * 2, -1)
        ids = torch.arange(V).expand(N, V)
    else:
        ids = torch.randint(0, V, (N, K), generator=g)
        probs = torch.rand(N, K, generator=g, dtype=dtype) / K
        probs[1, :2] = 0
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    ref, _, pr = distillation_loss(
        leaves[0] @ leaves[1].T + leaves[2], y, target_ids=ids, target_probs=probs, alpha=alpha, vocab_size=V
    )
    gr = torch.autograd.grad(ref, leaves)
    leaves2 = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, pg = chunked_distillation_loss(
        leaves2[0],
        leaves2[1],
        y,
        bias=leaves2[2],
        target_ids=ids,
        target_probs=probs,
        alpha=alpha,
        vocab_size=V,
        chunk_size=6,
    )
    gg = torch.autograd.grad(got, leaves2)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel(got, ref) <= tol and rel(pg["kd"], pr["kd"]) <= tol and rel(pg["ce"], pr["ce"]) <= tol
    for a, c in zip(gg, gr):
        assert rel(a, c) <= tol and cosine(a, c) >= 0.99999


def test_chunked_sparse_target_loss_and_dense_ids():
    h, w, b, ht, wt, bt, y = make(torch.float64)
    mask = y != IGNORE_INDEX
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (N, K), generator=g)
    probs = torch.rand(N, K, generator=g, dtype=torch.float64) / K
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = sparse_target_loss((hh @ ww.T)[:, :V], ids, probs, mask, 1.7).sum()
    gr = torch.autograd.grad(ref, [hh, ww])
    hh2, ww2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = chunked_sparse_target_loss(hh2, ww2, ids, probs, mask, temperature=1.7, vocab_size=V, chunk_size=4)
    gg = torch.autograd.grad(got, [hh2, ww2])
    assert rel(got, ref) <= 1e-12 and all(rel(a, c) <= 1e-10 for a, c in zip(gg, gr))
    # dense targets: ids None, or an expanded arange (never copied per row)
    p = torch.softmax(ht @ wt[:V].T, -1)
    arange = torch.arange(V).expand(N, V)
    assert is_identity_ids(arange) and not is_identity_ids(ids) and not is_identity_ids(arange.flip(-1))
    d1 = chunked_sparse_target_loss(h, w, None, p, mask, vocab_size=V, chunk_size=4)
    d2 = chunked_sparse_target_loss(h, w, arange, p, mask, vocab_size=V, chunk_size=4)
    d3 = sparse_target_loss((h @ w.T)[:, :V], arange, p, mask).sum()
    assert torch.allclose(d1, d3) and torch.allclose(d2, d3)
    # and through the distillation loss: the dense target's forward KL is the live teacher's
    a = chunked_distillation_loss(h, w, y, target_ids=arange, target_probs=p, vocab_size=V, chunk_size=4)
    c = chunked_distillation_loss(h, w, y, teacher_hidden=ht, teacher_weight=wt, vocab_size=V, chunk_size=4)
    assert torch.allclose(a[0], c[0]) and torch.allclose(a[2]["kd"], c[2]["kd"])


# ---------------------------------------------------------------------------------------------
# Through the trainer


def _sgd_step(student_dir, feats, batch, accum, tmp, **kw):
    from transformers import TrainingArguments

    from potstill.models import load_model, load_tokenizer
    from potstill.train.data import Collator
    from potstill.train.trainer import DistillTrainer

    tok = load_tokenizer(student_dir, padding_side="right")
    model = load_model(student_dir)
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to=[],
        remove_unused_columns=False,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    kd = {k: kw.pop(k) for k in ("chunk_size", "divergence", "beta", "skew_alpha") if k in kw}
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok.pad_token_id),
        vocab_size=len(tok),
        kd=KDSettings(temperature=2.0, alpha=0.5, **kd),
        **kw,
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}, trainer


_SETUP: dict = {}


@pytest.fixture
def kd_setup(tiny_student_dir, tiny_teacher_dir, make_pairs):
    """(features, top-k features, teacher model) for 8 pairs, built once per session."""
    from potstill.models import load_model, load_tokenizer
    from potstill.train.data import build_features

    key = (str(tiny_student_dir), str(tiny_teacher_dir))
    if key in _SETUP:
        return _SETUP[key]
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    pairs = make_pairs(8, teacher_dir=tiny_teacher_dir, top_k=5)
    feats = build_features(pairs, tok, 256, True)
    topk_feats = build_features(pairs, tok, 256, True, topk=True)
    assert len({len(f["input_ids"]) for f in feats}) > 1  # padding matters
    _SETUP[key] = feats, topk_feats, load_model(tiny_teacher_dir)
    return _SETUP[key]


def _assert_same(a, b, rtol=1e-4, atol=1e-6):
    assert sum(float(v.abs().sum()) for v in a.values()) > 1e-3
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_trainer_batch8_equals_batch1_accum8_each_divergence(tmp_path, tiny_student_dir, kd_setup, name):
    feats, _, teacher = kd_setup
    kw = dict(method="kd", teacher=teacher, divergence=name, beta=0.3, skew_alpha=0.2, chunk_size=16)
    a, tr = _sgd_step(tiny_student_dir, feats, 8, 1, tmp_path / "a", **kw)
    assert tr._head_ok == {"student": True, "teacher": True}  # the chunked path ran
    b, _ = _sgd_step(tiny_student_dir, feats, 1, 8, tmp_path / "b", **kw)
    _assert_same(a, b)


@pytest.mark.parametrize("case", ["jsd", "topk", "sft"])
def test_trainer_chunked_equals_full_logits(tmp_path, tiny_student_dir, kd_setup, case):
    feats, topk_feats, teacher = kd_setup
    if case == "jsd":
        kw, data = dict(method="kd", teacher=teacher, divergence="jsd", beta=0.7), feats
    elif case == "topk":
        kw, data = dict(method="kd"), topk_feats
    else:
        kw, data = dict(method="sft"), feats
    a, tr = _sgd_step(tiny_student_dir, data, 4, 2, tmp_path / "a", chunk_size=5, **kw)
    assert tr._head_ok.get("student") is True
    b, tr_full = _sgd_step(tiny_student_dir, data, 4, 2, tmp_path / "b", chunked=False, **kw)
    assert tr_full._head_ok == {}
    _assert_same(a, b)
    assert tr.last_parts.keys() == tr_full.last_parts.keys()
    for k in tr.last_parts:
        assert math.isclose(tr.last_parts[k], tr_full.last_parts[k], rel_tol=1e-5)


def test_trainer_falls_back_when_logits_are_not_hidden_at_head(tmp_path, tiny_student_dir, kd_setup):
    """A model whose logits are post-processed (here: scaled, like soft-capping) is detected."""
    from transformers import TrainingArguments

    from potstill.models import load_model
    from potstill.train.data import Collator
    from potstill.train.trainer import DistillTrainer, lm_head_of

    feats, _, teacher = kd_setup
    model = load_model(tiny_student_dir)
    head = model.lm_head
    assert lm_head_of(model) is head
    head.forward = lambda x: torch.nn.functional.linear(x, head.weight) * 0.5
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=True,
    )
    tr = DistillTrainer(
        model=model, args=args, train_dataset=feats, data_collator=Collator(0), method="kd", teacher=teacher
    )
    batch = Collator(0)(feats[:4])
    loss = tr.compute_loss(model, batch)
    assert tr._head_ok == {"teacher": True, "student": False}
    tr._head_ok = {}
    ref = DistillTrainer.compute_loss(tr, model, batch, return_outputs=True)[0]  # full-logit path
    assert torch.allclose(loss, ref)


def test_lm_head_of_peft_model(tiny_student_dir):
    from peft import LoraConfig, get_peft_model

    from potstill.models import load_model
    from potstill.train.trainer import lm_head_of

    model = load_model(tiny_student_dir)
    head = model.lm_head
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert lm_head_of(peft) is head
    adapted = get_peft_model(
        load_model(tiny_student_dir), LoraConfig(r=2, target_modules=["lm_head"], task_type="CAUSAL_LM")
    )
    assert lm_head_of(adapted) is None  # an adapted head: full logits


# ---------------------------------------------------------------------------------------------
# -inf logits (a padded or masked vocabulary): issue #13

INF_IDS = [5, 17]  # vocabulary entries masked with a -inf bias


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_closed_form_with_neginf_in_both_vs_support_autograd(name, kw):
    """kd_value_and_grad: entries -inf in both log-probabilities add 0 and get gradient 0; the rest is autograd's
    on the support (those entries removed)."""
    g = torch.Generator().manual_seed(6)
    s = torch.randn(9, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(9, V, generator=g, dtype=torch.float64) * 2
    s[:, INF_IDS] = t[:, INF_IDS] = float("-inf")
    s[2, 0] = t[2, 0] = float("-inf")
    val, g_got = kd_value_and_grad(name, torch.log_softmax(s, -1), torch.log_softmax(t, -1), **kw)
    assert torch.isfinite(val).all() and torch.isfinite(g_got).all()
    for r in range(9):
        keep = torch.isfinite(s[r])
        x = s[r, keep].clone().requires_grad_()
        ref = divergence(name, torch.log_softmax(x, -1), torch.log_softmax(t[r, keep], -1), **kw)
        (g_ref,) = torch.autograd.grad(ref, x)
        assert rel(val[r], ref) <= 1e-12 and rel(g_got[r, keep], g_ref) <= 1e-10 and (g_got[r, ~keep] == 0).all()


def _support_reference(name, kw, h, w, b, ht, wt, bt, y, temp, alpha):
    """The full-logit float64 loss and its gradients with the KD vocabulary's -inf-in-both entries removed."""
    leaves = [x.double().clone().requires_grad_() for x in (h, w, b)]
    logits = leaves[0] @ leaves[1].T + leaves[2]
    t_logits = ht.double() @ wt.double().T + bt.double()
    both = torch.isneginf(b[:V]) & torch.isneginf(bt[:V])
    cols = torch.cat([(~both).nonzero().squeeze(1), torch.arange(V, w.shape[0])])  # + the padded rows (CE only)
    keep_t = (~both).nonzero().squeeze(1)
    y_sub = torch.where(y == IGNORE_INDEX, y, torch.searchsorted(cols, y))  # label ids in the support's numbering
    ref, _, parts = distillation_loss(
        logits[:, cols],
        y_sub,
        teacher_logits=t_logits[:, keep_t],
        alpha=alpha,
        temperature=temp,
        vocab_size=len(keep_t),
        divergence=name,
        **kw,
    )
    return ref, parts, torch.autograd.grad(ref, leaves)


@pytest.mark.parametrize("name,kw", VARIANTS)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_chunked_neginf_bias_in_both_heads(name, kw, temp):
    """A -inf bias entry in both lm_heads (value was NaN): equal to the float64 loss on the support, finite gradients,
    and 0 gradient for the masked rows of W and b."""
    h, w, b, ht, wt, bt, y = make(torch.float64)
    b[INF_IDS] = bt[INF_IDS] = float("-inf")
    y[torch.isin(y, torch.tensor(INF_IDS))] = 0  # a label on a masked id would be a genuine +inf CE
    ref, pr, gr = _support_reference(name, kw, h, w, b, ht, wt, bt, y, temp, 0.3)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, parts = chunked_distillation_loss(
        leaves[0],
        leaves[1],
        y,
        bias=leaves[2],
        teacher_hidden=ht,
        teacher_weight=wt,
        teacher_bias=bt,
        alpha=0.3,
        temperature=temp,
        vocab_size=V,
        divergence=name,
        chunk_size=7,
        **kw,
    )
    gg = torch.autograd.grad(got, leaves)
    assert torch.isfinite(got) and all(torch.isfinite(x).all() for x in gg)
    assert rel(got, ref) <= 1e-12 and rel(parts["kd"], pr["kd"]) <= 1e-12
    for a, c in zip(gg, gr):
        assert rel(a, c) <= 1e-10
    assert (gg[1][INF_IDS] == 0).all() and (gg[2][INF_IDS] == 0).all()


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_chunked_neginf_bias_float32(name, kw):
    h, w, b, ht, wt, bt, y = make(torch.float32)
    b[INF_IDS] = bt[INF_IDS] = float("-inf")
    y[torch.isin(y, torch.tensor(INF_IDS))] = 0
    ref, pr, gr = _support_reference(name, kw, h, w, b, ht, wt, bt, y, 2.0, 0.3)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, parts = chunked_distillation_loss(
        leaves[0],
        leaves[1],
        y,
        bias=leaves[2],
        teacher_hidden=ht,
        teacher_weight=wt,
        teacher_bias=bt,
        alpha=0.3,
        temperature=2.0,
        vocab_size=V,
        divergence=name,
        chunk_size=6,
        **kw,
    )
    gg = torch.autograd.grad(got, leaves)
    assert rel(got, ref) <= 1e-6 and rel(parts["kd"], pr["kd"]) <= 1e-6
    for a, c in zip(gg, gr):
        assert torch.isfinite(a).all() and rel(a, c) <= 1e-5


@pytest.mark.parametrize(
    "name,kw,side",
    [
        ("forward_kl", {}, "teacher"),
        ("reverse_kl", {}, "student"),
        ("jsd", {"beta": 0.5}, "student"),
        ("jsd", {"beta": 0.5}, "teacher"),
        ("skew_forward_kl", {"skew_alpha": 0.1}, "student"),
        ("skew_reverse_kl", {"skew_alpha": 0.3}, "teacher"),
    ],
)
def test_chunked_neginf_bias_in_one_head_finite_cases(name, kw, side):
    """-inf in one head only, where the divergence is finite (was NaN): the limit of a very negative bias."""
    h, w, b, ht, wt, bt, y = make(torch.float64)
    (b if side == "student" else bt)[INF_IDS] = float("-inf")
    y[torch.isin(y, torch.tensor(INF_IDS))] = 0
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, _ = chunked_distillation_loss(
        leaves[0],
        leaves[1],
        y,
        bias=leaves[2],
        teacher_hidden=ht,
        teacher_weight=wt,
        teacher_bias=bt,
        temperature=2.0,
        vocab_size=V,
        divergence=name,
        chunk_size=7,
        **kw,
    )
    gg = torch.autograd.grad(got, leaves)
    limit = [x.nan_to_num(neginf=-1e5).requires_grad_() for x in (h, w, b)]
    logits = limit[0] @ limit[1].T + limit[2]
    ref = distillation_loss(
        logits,
        y,
        teacher_logits=ht @ wt.T + bt.nan_to_num(neginf=-1e5),
        temperature=2.0,
        vocab_size=V,
        divergence=name,
        **kw,
    )[0]
    gr = torch.autograd.grad(ref, limit)
    assert torch.isfinite(got) and rel(got, ref) <= 1e-12
    for a, c in zip(gg, gr):
        assert torch.isfinite(a).all() and rel(a, c) <= 1e-10


def test_chunked_infinite_kl_is_not_hidden():
    """Teacher mass on an id the student masks with -inf: the forward KL is +inf (not NaN, not finite)."""
    h, w, b, ht, wt, bt, y = make(torch.float64)
    b[INF_IDS] = float("-inf")
    y[torch.isin(y, torch.tensor(INF_IDS))] = 0
    loss, _, parts = chunked_distillation_loss(
        h, w, y, bias=b, teacher_hidden=ht, teacher_weight=wt, teacher_bias=bt, vocab_size=V, chunk_size=7
    )
    assert float(parts["kd"]) == float("inf") and float(loss) == float("inf")


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("target", ["dense", "arange", "ids", "topk"])
def test_chunked_sparse_targets_with_neginf_student_bias(target, temp):
    """Store / top-k / sampled targets, with student ids masked by a -inf bias where the target has no mass
    (the dense target at T = 1 gave NaN: 0 * -inf): equal to the full-logit float64 loss."""
    h, w, b, ht, wt, bt, y = make(torch.float64)
    b[INF_IDS] = bt[INF_IDS] = float("-inf")
    y[torch.isin(y, torch.tensor(INF_IDS))] = 0
    t_logits = ht @ wt[:V].T + bt[:V]
    g = torch.Generator().manual_seed(8)
    if target in ("dense", "arange"):
        probs = torch.softmax(t_logits / temp, -1)  # 0 on the masked ids
        ids = None if target == "dense" else torch.arange(V).expand(N, V)
    elif target == "ids":  # sampled: counts / n, padding entries (prob 0) pointing at a masked id
        ids = torch.multinomial(torch.softmax(t_logits, -1), K, replacement=True, generator=g)
        probs = torch.full((N, K), 1.0 / K, dtype=torch.float64)
        ids[:, -1], probs[:, -1] = INF_IDS[0], 0.0
    else:  # top-k of a teacher whose masked ids fill the tail of a short row
        lp, ids = torch.log_softmax(t_logits, -1).topk(V - 1, -1)
        probs = topk_target_probs(lp, temp)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    ref, _, pr = distillation_loss(
        leaves[0] @ leaves[1].T + leaves[2],
        y,
        target_ids=ids,
        target_probs=probs,
        alpha=0.4,
        temperature=temp,
        vocab_size=V,
    )
    gr = torch.autograd.grad(ref, leaves)
    leaves2 = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, pg = chunked_distillation_loss(
        leaves2[0],
        leaves2[1],
        y,
        bias=leaves2[2],
        target_ids=ids,
        target_probs=probs,
        alpha=0.4,
        temperature=temp,
        vocab_size=V,
        chunk_size=6,
    )
    gg = torch.autograd.grad(got, leaves2)
    assert torch.isfinite(got) and rel(got, ref) <= 1e-10 and rel(pg["kd"], pr["kd"]) <= 1e-10
    for a, c in zip(gg, gr):
        assert torch.isfinite(a).all() and rel(a, c) <= 1e-10
    mask = y != IGNORE_INDEX
    sub = chunked_sparse_target_loss(h, w, ids, probs, mask, bias=b, temperature=temp, vocab_size=V, chunk_size=6)
    want = sparse_target_loss((h @ w.T + b)[:, :V], ids, probs, mask, temp).sum()
    assert torch.isfinite(sub) and rel(sub, want) <= 1e-10


def test_fused_sparse_path_padded_rows_holding_most_of_the_mass():
    """T = 1 sparse targets, padded student rows 25 nats above the vocabulary: log S must not come from
    1 - (padded mass), which is 0 in float32 (NaN before)."""
    h, w, b, ht, wt, bt, y = make(torch.float32)
    b = b.clone()
    b[V:] = 25.0 + (h @ w.T).max()
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, V, (N, K), generator=g)
    probs = torch.full((N, K), 1.0 / K)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    got, _, parts = chunked_distillation_loss(
        leaves[0],
        leaves[1],
        y,
        bias=leaves[2],
        target_ids=ids,
        target_probs=probs,
        alpha=0.5,
        vocab_size=V,
        chunk_size=6,
    )
    gg = torch.autograd.grad(got, leaves)
    ref_leaves = [x.double().clone().requires_grad_() for x in (h, w, b)]
    ref, _, pr = distillation_loss(
        ref_leaves[0] @ ref_leaves[1].T + ref_leaves[2],
        y,
        target_ids=ids,
        target_probs=probs.double(),
        alpha=0.5,
        vocab_size=V,
    )
    gr = torch.autograd.grad(ref, ref_leaves)
    assert torch.isfinite(got) and rel(parts["kd"], pr["kd"]) <= 1e-5 and rel(got, ref) <= 1e-5
    for a, c in zip(gg, gr):
        assert torch.isfinite(a).all() and rel(a, c) <= 1e-4
