"""On-policy KD (GKD) and cross-tokenizer KD (ULD) in the trainer: one SGD step against a by-hand loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.test_train import make_cfg

from potstill.config import KDSettings
from potstill.losses import distillation_loss
from potstill.losses.uld import uld_loss
from potstill.models import load_model, load_tokenizer
from potstill.train import onpolicy
from potstill.train.args import training_arguments
from potstill.train.data import Collator, build_features
from potstill.train.trainer import DistillTrainer


def sgd_step(cfg, student_dir, feats, tmp: Path, collator, **kw):
    """Parameter deltas of one plain SGD step (lr 1) on the whole batch, and the trainer."""
    tok = load_tokenizer(student_dir, padding_side="right")
    model = load_model(student_dir)
    args = training_arguments(
        cfg,
        tmp,
        per_device_train_batch_size=len(feats),
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=collator,
        method="kd",
        processing_class=tok,
        vocab_size=len(tok),
        **kw,
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}, trainer


def reference_deltas(student_dir, loss_fn):
    model = load_model(student_dir)
    loss = loss_fn(model)
    loss.backward()
    return {k: -v.grad for k, v in model.named_parameters()}


def test_on_policy_batch_layout():
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 9, 10, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 9, 10, -100, -100]])
    prompts = onpolicy.split_prompts(ids, labels)
    assert [p.tolist() for p in prompts] == [[5, 6], [5]]
    b = onpolicy.on_policy_batch(prompts, [[11, 2], [12, 13, 14]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 11, 2], [5, 12, 13, 14]]
    assert b["labels"].tolist() == [[-100, -100, 11, 2], [-100, 12, 13, 14]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_gkd_step_is_the_divergence_on_the_students_own_tokens(
    tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, monkeypatch
):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    feats = build_features(make_pairs(4), tok, 256, True)

    def fake_sampler(model, prompts, *args, **kw):  # a function of the prompt: the batch order does not matter
        return [[int(p[-1]) % 30 + 3, int(p[-2]) % 30 + 3, tok.eos_token_id][: 1 + len(p) % 3] for p in prompts]

    monkeypatch.setattr(onpolicy, "sample_responses", fake_sampler)
    teacher = load_model(tiny_teacher_dir)
    got, trainer = sgd_step(
        cfg,
        tiny_student_dir,
        feats,
        tmp_path / "a",
        Collator(tok.pad_token_id),
        teacher=teacher,
        kd=KDSettings(alpha=0.5, temperature=2.0, divergence="jsd", beta=0.5, on_policy_ratio=1.0),
        eos_token_ids={tok.eos_token_id},
    )
    assert trainer.on_policy_batches == 1
    batch = Collator(tok.pad_token_id)(feats)
    prompts = onpolicy.split_prompts(batch["input_ids"], batch["labels"])
    new = onpolicy.on_policy_batch(prompts, fake_sampler(None, prompts), tok.pad_token_id)

    def loss(model):  # alpha 1 (no reference answer), mean over the sampled tokens
        out = model(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits
        with torch.no_grad():
            t = teacher(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits
        total, n, _ = distillation_loss(
            out[:, :-1],
            new["labels"][:, 1:],
            teacher_logits=t[:, :-1],
            alpha=1.0,
            temperature=2.0,
            vocab_size=len(tok),
            divergence="jsd",
            beta=0.5,
        )
        return total / n

    want = reference_deltas(tiny_student_dir, loss)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


def test_gkd_mixes_on_and_off_policy_batches_with_real_sampling(
    tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs
):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    feats = build_features(make_pairs(16), tok, 256, True)
    model = load_model(tiny_student_dir)
    args = training_arguments(
        cfg, tmp_path / "w", per_device_train_batch_size=2, max_steps=8, save_strategy="no", disable_tqdm=True
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok.pad_token_id),
        method="kd",
        processing_class=tok,
        vocab_size=len(tok),
        teacher=load_model(tiny_teacher_dir),
        kd=KDSettings(on_policy_ratio=0.5, on_policy_max_new_tokens=5),
        eos_token_ids={tok.eos_token_id},
    )
    result = trainer.train()
    assert 0 < trainer.on_policy_batches < 8 and torch.isfinite(torch.tensor(result.training_loss))
    with pytest.raises(ValueError, match="live teacher"):
        DistillTrainer(model=model, args=args, train_dataset=feats, method="kd", kd=KDSettings(on_policy_ratio=0.5))


def test_uld_step_matches_by_hand_loss(tmp_path, tiny_student_dir, make_tiny_llama, make_pairs):
    other = make_tiny_llama(tmp_path / "other_teacher", hidden=32, heads=4, tokenizer="other", seed=5)
    cfg = make_cfg(tmp_path, tiny_student_dir, other)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    t_tok = load_tokenizer(other, padding_side="right")
    assert len(tok) != len(t_tok) or tok.get_vocab() != t_tok.get_vocab()
    pairs = make_pairs(4)
    for p in pairs:  # the teacher's own ids of its answer, in its tokenizer
        p["response_token_ids"] = t_tok(p["response_text"], add_special_tokens=False).input_ids + [t_tok.eos_token_id]
    feats = build_features(pairs, tok, 256, reuse_teacher_ids=False, teacher_tokenizer=t_tok)
    assert all(f["t_labels"][-len(p["response_token_ids"]) :] == p["response_token_ids"] for f, p in zip(feats, pairs))
    collator = Collator(tok.pad_token_id, teacher_pad_id=t_tok.pad_token_id)
    teacher = load_model(other)
    got, trainer = sgd_step(
        cfg,
        tiny_student_dir,
        feats,
        tmp_path / "a",
        collator,
        teacher=teacher,
        kd=KDSettings(alpha=0.5, temperature=1.0, cross_tokenizer="uld"),
        uld=True,
        teacher_vocab_size=len(t_tok),
    )
    batch = collator(feats)

    def loss(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., : len(tok)]
        with torch.no_grad():
            t = teacher(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, len(tok)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        u, _ = uld_loss(logits, batch["labels"], t[..., : len(t_tok)], batch["t_labels"])
        return (0.5 * ce + 0.5 * u) / (batch["labels"][:, 1:] != -100).sum()

    want = reference_deltas(tiny_student_dir, loss)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)
    assert "uld_per_token" in trainer.last_parts
