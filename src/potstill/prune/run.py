"""``prune_model``: teacher directory + calibration data -> a smaller model directory and its ``prune.json``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .. import __version__
from ..io import atomic_dir, write_json
from ..models import check_model_dir, count_params, default_device, load_model, load_tokenizer, model_hash
from ..progress import say
from .calibration import calibration_hash, calibration_ids
from .importance import Importance, measure
from .settings import PruneSettings, Shape, target_shape
from .slicing import Kept, check_supported, choose, norm_scales, slice_state_dict, student_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "generation_config.json",
)


def prune_model(
    teacher_dir: Path,
    out_dir: Path,
    settings: PruneSettings,
    calibration: list,
    tokenizer=None,
    device: str | None = None,
) -> dict:
    """Prune the teacher at ``teacher_dir`` to ``settings``' sizes and write the student to ``out_dir``.

    ``calibration``: token id lists, or chat records ``{"messages", "response_text"?}`` formatted with
    ``tokenizer`` (default: the teacher's). ``out_dir`` is written atomically: config.json,
    model.safetensors, the teacher's tokenizer files, chat template and generation config, and
    ``prune.json`` (how it was derived). It loads with ``AutoModelForCausalLM.from_pretrained``.

    Returns a summary: ``out_dir``, ``teacher_params``, ``student_params``, ``shape`` (the student's
    sizes), ``kept_layers`` (teacher layer indices), ``calibration_sequences`` / ``_tokens``, ``seconds``.
    Bad settings (a target larger than the teacher, heads that do not divide) are a one-line
    :class:`~potstill.errors.UserError`, raised before the teacher's weights are loaded.
    """
    from transformers import AutoConfig  # defers transformers

    start = time.perf_counter()
    teacher_dir, out_dir = check_model_dir(teacher_dir), Path(out_dir)
    config = AutoConfig.from_pretrained(str(teacher_dir))
    check_supported(config)
    teacher_shape = Shape.of(config)
    target = target_shape(settings, teacher_shape)
    if tokenizer is None and any(isinstance(r, dict) for r in calibration):
        tokenizer = load_tokenizer(teacher_dir)
    seqs = calibration_ids(calibration, tokenizer, settings, config.vocab_size)

    teacher = load_model(teacher_dir, dtype=settings.dtype, device=device or default_device()).eval()
    teacher_params = count_params(teacher)
    say(f"prune: {_describe(teacher_shape)} -> {_describe(target)}, {len(seqs)} calibration sequences")
    imp = measure(teacher, seqs, settings, pad_id=0)
    kept = choose(imp, teacher_shape, target)
    scales = None
    if settings.rescale_norms and target.hidden_size < teacher_shape.hidden_size:
        scales = norm_scales(imp, kept)
    state = slice_state_dict(teacher.state_dict(), teacher_shape, kept, scales)
    del teacher
    student = _build(student_config(config, target, kept), state, _stored_dtype(config))
    del state

    record = {
        "format": 1,
        "method": "one-shot activation-importance pruning (Minitron), no gradients",
        "teacher": {
            "path": str(teacher_dir.resolve()),
            "model_hash": model_hash(teacher_dir),
            "model_type": config.model_type,
            "shape": teacher_shape.as_dict(),
            "params": teacher_params,
        },
        "student": {"shape": target.as_dict(), "params": count_params(student)},
        "settings": settings.model_dump(mode="json"),
        "calibration": {"sequences": len(seqs), "tokens": imp.tokens, "hash": calibration_hash(seqs)},
        "importance": _importance_record(imp, kept, settings),
        "kept": {
            "counts": {
                "layers": len(kept.layers),
                "hidden": len(kept.hidden),
                "heads": target.num_attention_heads,
                "kv_heads": target.num_key_value_heads,
                "mlp": target.intermediate_size,
            },
            **kept.as_dict(),
        },
        "norm_scales": None if scales is None else [round(scales[r], 6) for r in sorted(scales)],
        "versions": _versions(),
    }
    with atomic_dir(out_dir) as tmp:
        student.save_pretrained(str(tmp))
        for name in TOKENIZER_FILES:
            if (teacher_dir / name).is_file():
                shutil.copy2(teacher_dir / name, tmp / name)
        if (teacher_dir / "additional_chat_templates").is_dir():
            shutil.copytree(teacher_dir / "additional_chat_templates", tmp / "additional_chat_templates")
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(tmp / "prune.json", record)
    say(
        f"prune: {record['teacher']['params']:,} -> {record['student']['params']:,} parameters in "
        f"{record['seconds']:.1f}s, kept layers {kept.layers} -> {out_dir}"
    )
    return {
        "out_dir": str(out_dir),
        "teacher_params": teacher_params,
        "student_params": record["student"]["params"],
        "shape": target.as_dict(),
        "kept_layers": kept.layers,
        "calibration_sequences": len(seqs),
        "calibration_tokens": imp.tokens,
        "seconds": record["seconds"],
    }


def _build(config, state: dict, dtype: torch.dtype):
    """The student model from its config and state dict (no random init; tied embeddings re-tied)."""
    from transformers import AutoModelForCausalLM  # defers transformers
    from transformers.initialization import no_init_weights  # defers transformers

    config.dtype = dtype
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict({k: v.to("cpu", dtype) for k, v in state.items()}, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _stored_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _describe(s: Shape) -> str:
    return (
        f"{s.num_layers} layers x hidden {s.hidden_size}, {s.num_attention_heads}/{s.num_key_value_heads} heads, "
        f"MLP {s.intermediate_size}"
    )


def _round(t: torch.Tensor) -> list:
    return [float(f"{x:.6g}") for x in t.tolist()] if t.dim() == 1 else [_round(r) for r in t]


def _importance_record(imp: Importance, kept: Kept, settings: PruneSettings) -> dict:
    """Scores as measured on the teacher (all its layers); ``hidden`` summed over the kept layers' norms."""
    return {
        "layer_metric": settings.depth_metric,
        "aggregation": settings.aggregation,
        "layers": _round(imp.layers),
        "hidden": _round(imp.hidden(kept.layers)),
        "heads": _round(imp.heads),
        "mlp": _round(imp.mlp),
    }


def _versions() -> dict:
    import transformers  # defers transformers

    return {"potstill": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
