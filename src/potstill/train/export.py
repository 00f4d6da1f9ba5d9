"""Exporting a trained student: LoRA adapters (QLoRA too) and the weights gathered from a sharded run.

:func:`final_model` is what the train stage saves: LoRA merged, full precision, on the main process.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..distributed import gather_full_state_dict, is_main_process
from ..models import DTYPES, load_model


def apply_lora(model, lora, gradient_checkpointing: bool = False):
    """LoRA adapters on ``model``; a quantized (QLoRA) base is first made trainable in k-bit
    (``peft.prepare_model_for_kbit_training``: norms in float32, input grads for checkpointing)."""
    from peft import LoraConfig, get_peft_model  # defers peft (LoRA runs only)

    if lora.quantize != "none":
        from peft import prepare_model_for_kbit_training  # defers peft (LoRA runs only)

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    conf = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, conf)


def final_model(trainer, cfg: RunConfig, s_dir: Path):
    """The trained student to export (LoRA merged, full precision) on the main process; None on the
    other ranks of a multi-process launch. Every rank calls it: under FSDP / ZeRO-3 gathering the
    weights is a collective. A QLoRA student's adapters are merged into a fresh full-precision copy of
    the base, not into its 4/8-bit weights."""
    t = cfg.train
    full = gather_full_state_dict(trainer)  # None unless FSDP / DeepSpeed sharded the student
    if not is_main_process():
        return None
    model = (
        trainer.model
        if full is None
        else rebuild_from_state_dict(s_dir, full, cfg.student.dtype, lora=t.lora if t.lora.enabled else None)
    )
    if t.lora.enabled and t.lora.quantize != "none":
        from peft import get_peft_model_state_dict, set_peft_model_state_dict  # defers peft (LoRA runs only)

        adapters = get_peft_model_state_dict(model)
        model = apply_lora(load_model(s_dir, cfg.student.dtype), t.lora.model_copy(update={"quantize": "none"}))
        set_peft_model_state_dict(model, {k: v.to("cpu") for k, v in adapters.items()})
    if t.lora.enabled:
        model = model.merge_and_unload()
    return model.eval()


def rebuild_from_state_dict(model_dir, state_dict: dict, dtype: str = "float32", lora=None):
    """A CPU copy of the student (its ``config.json`` architecture, LoRA adapters when ``lora`` is
    given) holding ``state_dict`` — on the main process, to merge and export what sharded training
    gathered. Built outside DeepSpeed's ``zero.Init`` (this process alone builds it)."""
    from accelerate import init_empty_weights  # defers accelerate
    from transformers import AutoConfig, AutoModelForCausalLM  # defers transformers
    from transformers.integrations import deepspeed as hf_ds  # defers transformers

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:  # parameters on the meta device (replaced by the gathered tensors below), buffers computed on the CPU
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)), dtype=DTYPES[dtype])
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
    if lora is not None:
        model = apply_lora(model, lora)
    _, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing or unexpected:
        raise RuntimeError(
            f"gathered weights do not fit {model_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model
