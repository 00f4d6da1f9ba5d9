"""Large students: gradient checkpointing, bf16, QLoRA errors and config, the sharded-export rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from potstill.config import KDSettings, config_from_dict
from potstill.errors import UserError
from potstill.models import load_model, load_tokenizer
from potstill.train import train_student
from potstill.train.args import training_arguments
from potstill.train.data import Collator, build_features
from potstill.train.trainer import DistillTrainer


def make_cfg(base: Path, student: Path, teacher: Path, **train):
    t = {"batch_size": 4, "epochs": 1, "lr": 1e-2, "warmup_ratio": 0.0, "logging_steps": 1, "save_steps": 1000}
    t.update(train)
    return config_from_dict(
        {
            "seed": 0,
            "prompts": {"sources": [{"path": "p.jsonl"}]},
            "teacher": {"model": str(teacher)},
            "student": {"model": str(student)},
            "train": t,
        },
        base_dir=base,
    )


def one_sgd_step(cfg, student_dir, feats, method, teacher, out):
    """One optimizer step of plain SGD at lr 1: the weight change is minus the gradient."""
    tok = load_tokenizer(student_dir, padding_side="right")
    model = load_model(student_dir)
    args = training_arguments(
        cfg,
        out,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=1,
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
    result = trainer.train()
    return result.training_loss, {k: v.detach() - before[k] for k, v in model.named_parameters()}, model


@pytest.mark.parametrize("method", ["sft", "kd"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(
    tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, method
):
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    feats = build_features(make_pairs(4), tok, 256, True)
    teacher = load_model(tiny_teacher_dir) if method == "kd" else None
    runs = {}
    for gc in (False, True):
        cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, gradient_checkpointing=gc)
        args = training_arguments(cfg, tmp_path / "args")
        assert args.gradient_checkpointing is gc
        if gc:
            assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
        runs[gc] = one_sgd_step(cfg, tiny_student_dir, feats, method, teacher, tmp_path / str(gc))
    (loss0, delta0, _), (loss1, delta1, model1) = runs[False], runs[True]
    assert model1.is_gradient_checkpointing  # recomputation was really on
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert sum(float(v.abs().sum()) for v in delta0.values()) > 1e-3
    for k in delta0:  # the same computation replayed: equal up to float32 rounding
        torch.testing.assert_close(delta1[k], delta0[k], rtol=1e-5, atol=1e-7, msg=k)


def test_bf16_trains_a_step_on_the_cpu(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    from transformers.utils import is_torch_bf16_available_on_device

    if torch.cuda.is_available():
        pytest.skip("checks bf16 autocast on the CPU")
    if not is_torch_bf16_available_on_device("cpu"):
        pytest.skip("this CPU has no bfloat16 support in torch")
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, bf16=True, gradient_checkpointing=True)
    args = training_arguments(cfg, tmp_path / "args")
    assert args.bf16 and args.mixed_precision == "bf16" and args.use_cpu
    m = train_student("kd", cfg, make_pairs(8), tmp_path / "out", tmp_path / "work")
    assert m["steps"] == 2 and all(torch.isfinite(torch.tensor(x)) for _, x in m["loss_curve"])
    exported = load_model(tmp_path / "out")
    assert all(p.dtype == torch.float32 for p in exported.parameters())  # autocast: the weights stay float32
    base = load_model(tiny_student_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(dict(exported.named_parameters())[name], dict(base.named_parameters())[name])


# ---------------------------------------------------------------------------------------------
# QLoRA


def test_quantize_without_lora_is_a_user_error(tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs):
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, lora={"quantize": "4bit"})
    with pytest.raises(
        UserError,
        match=r"train.lora.quantize=4bit trains LoRA adapters on a quantized student: "
        r"set train.lora.enabled: true",
    ) as e:
        train_student("sft", cfg, make_pairs(4), tmp_path / "out", tmp_path / "work")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "have_bnb, have_cuda, missing",
    [(False, False, "bitsandbytes, a CUDA GPU"), (True, False, "a CUDA GPU"), (False, True, "bitsandbytes")],
)
def test_qlora_without_bitsandbytes_or_cuda_is_a_user_error(
    tmp_path, tiny_student_dir, tiny_teacher_dir, make_pairs, monkeypatch, have_bnb, have_cuda, missing
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (object() if have_bnb else None) if name == "bitsandbytes" else find_spec(name, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: have_cuda)
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, lora={"enabled": True, "quantize": "8bit"})
    with pytest.raises(UserError) as e:
        train_student("sft", cfg, make_pairs(4), tmp_path / "out", tmp_path / "work")
    msg = str(e.value)
    assert "\n" not in msg and "train.lora.quantize=8bit (QLoRA) needs the bitsandbytes package" in msg
    assert (
        "pip install 'potstill[qlora]'" in msg
        and "a CUDA GPU" in msg
        and msg.split("missing here: ")[1].startswith(missing)
    )


def test_qlora_needs_pretrained_weights_and_no_sharding(tmp_path, tiny_student_dir, monkeypatch):
    from potstill.models import load_model as load
    from potstill.train.student import _check_large_student

    with pytest.raises(UserError, match="needs pretrained student weights"):
        load(tiny_student_dir, init="random", quantize="4bit")
    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_student_dir, lora={"enabled": True, "quantize": "4bit"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match=r"QLoRA\) runs on one GPU or under DDP"):
        _check_large_student(cfg.train)


def test_4bit_config_is_nf4_double_quant_bf16():
    try:
        from potstill.models import bnb_config

        q4, q8 = bnb_config("4bit"), bnb_config("8bit")
    except ImportError as e:  # an old transformers without the quantization config
        pytest.skip(f"transformers' BitsAndBytesConfig unavailable: {e}")
    assert q4.load_in_4bit and not q4.load_in_8bit
    assert q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant is True
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16 and q4.bnb_4bit_quant_storage == torch.bfloat16
    assert q8.load_in_8bit and not q8.load_in_4bit
    with pytest.raises(ValueError):
        bnb_config("none")


# ---------------------------------------------------------------------------------------------
# Export after sharded training (FSDP / ZeRO-3): rank 0 rebuilds the student from gathered weights


@pytest.mark.parametrize("lora", [False, True])
def test_rebuild_from_a_gathered_state_dict(tiny_student_dir, lora):
    from potstill.config import LoraSettings
    from potstill.train.export import apply_lora as _apply_lora
    from potstill.train.export import rebuild_from_state_dict

    model = load_model(tiny_student_dir)
    settings = LoraSettings(enabled=True, r=4) if lora else None
    if lora:
        model = _apply_lora(model, settings)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)  # trained adapters (lora_B starts at zero)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}  # what accelerator.get_state_dict returns
    rebuilt = rebuild_from_state_dict(tiny_student_dir, state, lora=settings)
    if lora:
        rebuilt = rebuilt.merge_and_unload()
    assert not any(p.is_meta for p in rebuilt.parameters()) and not any(b.is_meta for b in rebuilt.buffers())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(ids).logits, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="do not fit"):
        rebuild_from_state_dict(
            tiny_student_dir, {k: v for k, v in state.items() if "layers.1." not in k}, lora=settings
        )


def test_qlora_export_merges_the_adapters_into_a_full_precision_base(tmp_path, tiny_student_dir, tiny_teacher_dir):
    """`_final_model` for a QLoRA student: the trained adapters are moved onto a freshly loaded
    float32 base and merged there (a plain LoRA model stands in for the 4-bit one on this CPU)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from potstill.train.export import apply_lora as _apply_lora
    from potstill.train.export import final_model as _final_model

    cfg = make_cfg(tmp_path, tiny_student_dir, tiny_teacher_dir, lora={"enabled": True, "r": 4, "quantize": "4bit"})
    trained = _apply_lora(load_model(tiny_student_dir), cfg.train.lora.model_copy(update={"quantize": "none"}))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        want = trained.eval()(ids).logits
    trainer = SimpleNamespace(model=trained, accelerator=SimpleNamespace(distributed_type=DistributedType.NO))
    final = _final_model(trainer, cfg, tiny_student_dir)
    assert type(final).__name__ == "LlamaForCausalLM" and final is not trained.base_model.model
    assert all(p.dtype == torch.float32 for p in final.parameters())
    with torch.no_grad():
        torch.testing.assert_close(final(ids).logits, want, rtol=1e-5, atol=1e-5)
