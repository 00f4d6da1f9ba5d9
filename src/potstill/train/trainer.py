"""The transformers Trainer with a distillation loss (SFT, or KD from a live teacher / top-k log-probs).

Normalisation is exact under padding and gradient accumulation: :meth:`DistillTrainer.compute_loss`
returns the *sum* of per-token losses divided by the number of response tokens in the whole
global batch (``num_items_in_batch``, counted by the Trainer over every micro-batch of the
optimizer step), so ``batch 4 x accum 1`` and ``batch 1 x accum 4`` give the same gradients.

Also here: :func:`training_arguments` (``TrainingArguments`` from ``cfg.train``) and the resume
helpers :func:`latest_checkpoint` / :func:`resume_point` for ``work_dir``'s ``checkpoint-*``.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Literal

import torch
from transformers import Trainer, TrainingArguments

from ..io import read_json, write_json
from ..losses import IGNORE_INDEX, distillation_loss

log = logging.getLogger(__name__)
RESUME_KEY_FILE = "resume_key.json"


class DistillTrainer(Trainer):
    """A :class:`transformers.Trainer` whose loss is :func:`potstill.losses.distillation_loss`.

    Args:
        method: ``"sft"`` (cross-entropy on the response) or ``"kd"``.
        teacher: the live teacher model (``kd`` with signal ``live``); kept in eval mode without
            gradients and moved to the training device. ``None`` for ``sft`` and top-k KD (the
            batches then carry ``topk_ids`` / ``topk_logprobs`` from the collator).
        alpha, temperature: KD mix and temperature.
        vocab_size: the tokenizer's vocabulary size; the KD term ignores logits beyond it.
        Other arguments go to :class:`transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        method: Literal["sft", "kd"] = "sft",
        teacher: torch.nn.Module | None = None,
        alpha: float = 0.5,
        temperature: float = 1.0,
        vocab_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.method, self.alpha, self.temperature, self.vocab_size = method, alpha, temperature, vocab_size
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)
        # Always have the Trainer count target tokens over the global batch (num_items_in_batch);
        # with it, training_step treats our loss as already scaled for gradient accumulation.
        self.model_accepts_loss_kwargs = True
        self._parts: dict[str, torch.Tensor] = {}
        self._part_tokens = 0
        self.last_parts: dict[str, float] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sum of per-token losses over response tokens / response tokens in the global batch."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        topk_ids = inputs.pop("topk_ids", None)
        topk_lps = inputs.pop("topk_logprobs", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
        # Position t predicts token t + 1 (labels[:, 0] is always a prompt token, so nothing is lost).
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]
        kw = {}
        if self.method == "kd":
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(
                        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False
                    )
                kw["teacher_logits"] = t_out.logits[:, :-1]
            elif topk_ids is not None:
                kw["teacher_ids"], kw["teacher_logprobs"] = topk_ids[:, 1:], topk_lps[:, 1:]
            else:
                raise RuntimeError("kd needs a live teacher or top-k log-probs in the batch")
        total, n_local, parts = distillation_loss(
            logits,
            targets,
            alpha=self.alpha,
            temperature=self.temperature,
            vocab_size=self.vocab_size,
            ignore_index=IGNORE_INDEX,
            **kw,
        )
        denom = num_items_in_batch if num_items_in_batch is not None else n_local
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
        loss = total / (denom.clamp(min=1) if torch.is_tensor(denom) else max(denom, 1))
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch is summed over processes while DDP averages gradients over them.
            loss = loss * self.accelerator.num_processes
        for key, value in parts.items():  # kept as tensors: no device sync per micro-batch
            self._parts[key] = self._parts.get(key, 0) + value
        self._part_tokens = self._part_tokens + n_local.detach()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the per-token means of the loss parts (``ce``, ``kd``) since the last log."""
        n = int(self._part_tokens)
        if n:
            self.last_parts = {f"{k}_per_token": float(v) / n for k, v in self._parts.items()}
            logs = {**logs, **{k: round(v, 6) for k, v in self.last_parts.items()}}
            self._parts, self._part_tokens = {}, 0
        super().log(logs, *args, **kwargs)


def _warmup(ratio: float) -> dict:
    # transformers 5 dropped warmup_ratio: a float warmup_steps < 1 is a ratio of the total steps.
    if "warmup_ratio" in inspect.signature(TrainingArguments).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def training_arguments(cfg, work_dir: Path, **overrides) -> TrainingArguments:
    """``TrainingArguments`` from ``cfg.train`` (no evaluation, no hub, checkpoints in ``work_dir``)."""
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
