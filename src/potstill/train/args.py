"""``TrainingArguments`` from the run config, and resuming from ``work_dir``'s checkpoints.

:func:`training_arguments` maps ``cfg.train`` onto :class:`transformers.TrainingArguments` (no
evaluation, no hub, checkpoints in ``work_dir``); :func:`latest_checkpoint` / :func:`resume_point`
find the checkpoint a killed run continues from.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..errors import UserError
from ..io import read_json, write_json

log = logging.getLogger(__name__)
RESUME_KEY_FILE = "resume_key.json"


def _warmup(ratio: float) -> dict:
    # transformers 5 dropped warmup_ratio: a float warmup_steps < 1 is a ratio of the total steps.
    if "warmup_ratio" in inspect.signature(TrainingArguments).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _precision(bf16: bool) -> dict:
    """bfloat16 autocast on a GPU that has it, else on the CPU (transformers wants ``use_cpu`` there)."""
    if not bf16:
        return {"bf16": False}
    import torch  # defers torch
    from transformers.utils import is_torch_bf16_gpu_available  # defers transformers

    if is_torch_bf16_gpu_available():
        return {"bf16": True}
    if torch.cuda.is_available():
        raise UserError("train.bf16: this GPU has no bfloat16 support (set train.bf16: false)", where="train.bf16")
    return {"bf16": True, "use_cpu": True}


def _checkpointing(on: bool) -> dict:
    # Non-reentrant recomputation: works with frozen inputs (LoRA, QLoRA) and under FSDP / DeepSpeed.
    # transformers 5.x renamed gradient_checkpointing* to activation_checkpointing* (old names deprecated).
    new = "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
    name = "activation_checkpointing" if new else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def training_arguments(cfg, work_dir: Path, **overrides) -> TrainingArguments:
    """``TrainingArguments`` from ``cfg.train`` (no evaluation, no hub, checkpoints in ``work_dir``).

    ``batch_size`` is per device: under ``accelerate launch --num_processes N`` the global batch of an
    optimizer step is ``batch_size x N x grad_accum`` (the Trainer gives each process every N-th
    batch of one seeded permutation, ``data_seed``), the same examples as one process with
    ``batch_size x N``. ``train.bf16`` is bfloat16 mixed precision (autocast; the weights stay in
    ``student.dtype``); ``train.gradient_checkpointing`` recomputes activations (non-reentrant).
    """
    t = cfg.train
    kwargs = dict(
        output_dir=str(work_dir),
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        **_warmup(t.warmup_ratio),
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        report_to=t.report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        eval_strategy="no",
        push_to_hub=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # helps GPU copies only; warns on every CPU run
        **_precision(t.bf16),
        **_checkpointing(t.gradient_checkpointing),
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` (its trainer_state.json, written last, reads back)."""
    found = []
    for p in Path(work_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    for step, p in sorted(found, reverse=True):
        try:
            if json.loads((p / "trainer_state.json").read_text())["global_step"] == step:
                return p
        except (OSError, ValueError, KeyError):
            log.warning("ignoring incomplete checkpoint %s", p)
    return None


def resume_point(work_dir: Path, key: str) -> Path | None:
    """The checkpoint to resume from, if ``work_dir`` was written by a compatible run.

    Checkpoints of a run with a different resume key (other pairs, batch shape, model, method...)
    are removed: resuming them would silently mix two trainings.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    key_file = work_dir / RESUME_KEY_FILE
    old = read_json(key_file).get("key") if key_file.exists() else None
    if old is not None and old != key:
        stale = list(work_dir.glob("checkpoint-*"))
        if stale:
            log.warning("%s: checkpoints from a different training setup; starting over", work_dir)
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
    write_json(key_file, {"key": key})
    return latest_checkpoint(work_dir)
