"""The train stage: features, exact loss normalisation, SFT/KD/LoRA exports, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from potstill.config import KDSettings, config_from_dict
from potstill.errors import UserError
from potstill.models import load_model, load_tokenizer
from potstill.train import append_card_section, train_student
from potstill.train.args import latest_checkpoint, training_arguments
from potstill.train.data import Collator, build_features, encode_prompt
from potstill.train.trainer import DistillTrainer


def make_cfg(base: Path, student: Path, teacher: Path, **train) -> object:
    t = {"batch_size": 4, "epochs": 2, "lr": 1e-2, "warmup_ratio": 0.0, "logging_steps": 1, "save_steps": 1000}
    t.update(train)
    data = {
        "seed": 0,
        "prompts": {"sources": [{"path": "prompts.jsonl"}]},
        "teacher": {"model": str(teacher)},
        "student": {"model": str(student)},
        "train": t,
    }
    return config_from_dict(data, base_dir=base)


def dirs(tmp_path: Path, name: str = "sft") -> tuple[Path, Path]:
    return tmp_path / "out" / name, tmp_path / "work" / name


# ---------------------------------------------------------------------------------------------
# Features


def test_features_mask_prompt_and_truncate_left(tiny_student_dir, make_pairs):
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    pairs = make_pairs(3)
    feats = build_features(pairs, tok, max_seq_len=256, reuse_teacher_ids=True)
    for f, p in zip(feats, pairs):
        prompt = encode_prompt(tok, p["messages"])
        assert f["input_ids"] == prompt + p["response_token_ids"]
        assert f["labels"] == [-100] * len(prompt) + p["response_token_ids"]
    short = build_features(pairs, tok, max_seq_len=8, reuse_teacher_ids=True)
    for f, p in zip(short, pairs):
        n = len(p["response_token_ids"])
        assert len(f["input_ids"]) == 8 and f["labels"][0] == -100
        assert f["input_ids"][-n:] == p["response_token_ids"] and f["labels"].count(-100) == 8 - n


def test_features_retokenize_and_topk_alignment(tiny_student_dir, make_pairs):
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    pairs = make_pairs(2)
    pairs[0]["response_token_ids"] = [5, 5, 5]  # ignored: tokenizers "differ"
    pairs[1]["finish_reason"] = "length"
    f0, f1 = build_features(pairs, tok, 256, reuse_teacher_ids=False)
    want = tok(pairs[0]["response_text"], add_special_tokens=False).input_ids
    assert [x for x in f0["labels"] if x != -100] == want + [tok.eos_token_id]
    assert [x for x in f1["labels"] if x != -100][-1] != tok.eos_token_id  # cut off: no EOS taught

    pairs = make_pairs(2)
    for p in pairs:
        p["top_logprobs"] = [[[t, -0.1], [t + 1, -2.5]] for t in p["response_token_ids"]]
    pairs[1]["top_logprobs"][0] = [[7, -0.3]]  # a shorter row
    batch = Collator(tok.pad_token_id)(build_features(pairs, tok, 256, True, topk=True))
    labels, ids, lps = batch["labels"], batch["topk_ids"], batch["topk_logprobs"]
    resp = labels != -100
    assert ids.shape == (*labels.shape, 2)
    assert (ids[resp][:, 0] == labels[resp]).sum() == resp.sum() - 1  # row t is the top-k of token t
    assert torch.isinf(lps[~resp]).all() and torch.isfinite(lps[resp][:, 0]).all()
    lengths = [len(encode_prompt(tok, p["messages"])) + len(p["response_token_ids"]) for p in pairs]
    assert batch["attention_mask"].sum(1).tolist() == lengths

    pairs[0]["top_logprobs"] = pairs[0]["top_logprobs"][:-1]
    with pytest.raises(UserError, match="rerun generate"):
        build_features(pairs, tok, 256, True, topk=True)


# ---------------------------------------------------------------------------------------------
# Exact normalisation under padding and gradient accumulation


def _one_sgd_step(cfg, student_dir, feats, batch, accum, method, teacher=None, tmp=None):
    tok = load_tokenizer(student_dir, padding_side="right")
    model = load_model(student_dir)
    args = training_arguments(
        cfg,
        tmp,
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
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok.pad_token_id),
        method=method,
        teacher=teacher,
        kd=KDSettings(alpha=0.5, temperature=2.0),
        vocab_size=len(tok),
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}


@pytest.mark.parametrize("signal", ["sft", "live", "topk"])
def test_batch4_equals_batch1_accum4(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, signal):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    pairs = make_pairs(4, teacher_dir=tiny_teacher_dir, top_k=5 if signal == "topk" else 0)
    feats = build_features(pairs, tok, 256, True, topk=signal == "topk")
    assert len({len(f["input_ids"]) for f in feats}) > 1  # padding matters
    method = "sft" if signal == "sft" else "kd"
    teacher = load_model(tiny_teacher_dir) if signal == "live" else None
    a = _one_sgd_step(cfg, tiny_student_dir, feats, 4, 1, method, teacher, tmp_path / "a")
    b = _one_sgd_step(cfg, tiny_student_dir, feats, 1, 4, method, teacher, tmp_path / "b")
    norm = sum(float(v.abs().sum()) for v in a.values())
    assert norm > 1e-3
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------------------------
# The stage end to end


def _loss_curve_drops(metrics, factor):
    curve = [loss for _, loss in metrics["loss_curve"]]
    assert len(curve) >= 4 and curve[-1] < factor * curve[0], curve


def _check_export(out: Path, method: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(model).__name__ == "LlamaForCausalLM"
    AutoTokenizer.from_pretrained(str(out))
    card = (out / "README.md").read_text()
    for section in ("## Model details", "## How it was distilled", "## Data", "## Provenance"):
        assert section in card
    assert json.loads((out / "training.json").read_text())["method"] == method
    return model, card


def test_train_student_sft_learns_and_exports(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=12)
    out, work = dirs(tmp_path)
    prov = {"pairs_sha256": "abc123", "config_sha256": "def456"}
    m = train_student("sft", cfg, make_pairs(8), out, work, provenance=prov)
    assert m["steps"] == 24 and m["pairs"] == 8 and m["response_ids"] == "teacher"
    assert m["response_tokens"] > 8 and m["runtime_s"] > 0 and m["params"] > 0
    _loss_curve_drops(m, 0.6)
    _, card = _check_export(out, "sft")
    assert "abc123" in card and "def456" in card and "sft" in card
    append_card_section(out, "Evaluation", "| split | score |\n|---|---|\n| test | 0.5 |")
    append_card_section(out, "Evaluation", "| split | score |\n|---|---|\n| test | 0.7 |")
    card = (out / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "0.7" in card and "0.5 |" not in card
    assert "## Provenance" in card


@pytest.mark.parametrize("signal", ["live", "topk"])
def test_train_student_kd(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, signal):
    cfg = make_cfg(
        tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=6, lr=3e-2, kd={"signal": signal, "temperature": 2.0}
    )
    out, work = dirs(tmp_path, "kd")
    pairs = make_pairs(8, teacher_dir=tiny_teacher_dir, top_k=8)
    m = train_student("kd", cfg, pairs, out, work)
    assert set(m["final_parts"]) == {"ce_per_token", "kd_per_token"}
    assert m["kd"]["signal"] == signal
    _loss_curve_drops(m, 0.8)
    _check_export(out, "kd")


def test_lora_is_merged_into_a_plain_model(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=2, lora={"enabled": True, "r": 4})
    out, work = dirs(tmp_path)
    train_student("sft", cfg, make_pairs(8), out, work)
    model, card = _check_export(out, "sft")
    base = load_model(tiny_student_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(model.named_parameters())[name], dict(base.named_parameters())[name])
    assert "merged" in card


def test_kd_with_mismatched_tokenizer_trains_text_level(tmp_path, tiny_teacher_dir, make_tiny_llama, make_pairs):
    student = make_tiny_llama(tmp_path / "other_student", tokenizer="other")
    topk = make_cfg(tmp_path, student, tiny_teacher_dir, epochs=1, kd={"signal": "topk"})
    out, work = dirs(tmp_path, "kd")
    with pytest.raises(UserError) as info:  # top-k ids are the teacher's token ids: token-level only
        train_student("kd", topk, make_pairs(4), out, work)
    msg = str(info.value)
    assert "'sft'" in msg and "token-level" in msg and "\n" not in msg
    assert not out.exists()
    cfg = make_cfg(tmp_path, student, tiny_teacher_dir, epochs=1)
    m = train_student("kd", cfg, make_pairs(4), out, work)  # text-level distillation (train.kd.cross_tokenizer: sft)
    assert m["kd_path"] == "sft" and m["response_ids"] == "re-tokenized" and set(m["final_parts"]) == {"ce_per_token"}


def test_topk_without_logprobs_is_a_user_error(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, kd={"signal": "topk"})
    with pytest.raises(UserError, match="teacher.top_logprobs > 0"):
        train_student("kd", cfg, make_pairs(4), *dirs(tmp_path, "kd"))


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    pairs = make_pairs(8)
    out, work = dirs(tmp_path)
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=2, save_steps=2)
    m1 = train_student("sft", cfg, pairs, out, work)
    assert m1["steps"] == 4 and m1["resumed_from_step"] is None
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(out)
    (work / "checkpoint-6").mkdir()  # killed while saving: no trainer_state.json
    assert latest_checkpoint(work).name == "checkpoint-4"
    cfg2 = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=4, save_steps=2)
    m2 = train_student("sft", cfg2, pairs, out, work)
    assert m2["resumed_from_step"] == 4 and m2["steps"] == 8 and m2["steps_this_run"] == 4
    assert (out / "model.safetensors").is_file()
    # Other pairs: the old checkpoints are not resumed.
    m3 = train_student("sft", cfg, make_pairs(6), out, work)
    assert m3["resumed_from_step"] is None


def test_lora_resume(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    pairs = make_pairs(8)
    out, work = dirs(tmp_path)
    lora = {"enabled": True, "r": 4}
    train_student(
        "sft", make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, save_steps=2, lora=lora), pairs, out, work
    )
    cfg2 = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=3, save_steps=2, lora=lora)
    m = train_student("sft", cfg2, pairs, out, work)
    assert m["resumed_from_step"] == 4 and m["steps"] == 6
    _check_export(out, "sft")


def test_cpu_training_warns_nothing_about_pin_memory(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, recwarn):
    """``dataloader_pin_memory`` is on only with CUDA: no "'pin_memory' ... no accelerator" warning per CPU run."""
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, epochs=1)
    train_student("sft", cfg, make_pairs(4), *dirs(tmp_path))
    assert not [str(w.message) for w in recwarn if "pin_memory" in str(w.message)]
    assert training_arguments(cfg, tmp_path / "args").dataloader_pin_memory == torch.cuda.is_available()
