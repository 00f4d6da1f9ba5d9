"""Training one student per method (``sft`` or ``kd``), exported as a plain HF model dir (the train stage's work).

``train_student`` tokenizes the pairs with the student's tokenizer, trains with
:class:`~potstill.train.trainer.DistillTrainer` (checkpoints in ``work_dir``; a killed run resumes
from the latest complete ``checkpoint-*`` there), merges LoRA adapters, and writes ``out_dir``
atomically: safetensors weights, tokenizer, ``training.json`` and a ``README.md`` model card.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from transformers import TrainerCallback

from ..config import RunConfig
from ..distributed import is_main_process, launched, wait_for_everyone
from ..errors import UserError
from ..io import atomic_dir, sha256_json, write_json
from ..models import check_quantize, count_params, load_model, load_tokenizer, tokenizer_fingerprint
from ..progress import say
from ..teachers.spec import ModelSpec, teacher_spec
from ..vocab import compare_tokenizers, kd_path
from .args import latest_checkpoint, resume_point, training_arguments
from .card import write_model_card
from .data import Collator, build_features, open_signal_store
from .export import apply_lora, final_model
from .trainer import DistillTrainer

log = logging.getLogger(__name__)


def teacher_tokenizer_dir(cfg: RunConfig, spec: ModelSpec) -> Path | None:
    """Where the teacher's tokenizer lives: its model directory, or ``teacher.tokenizer`` for an API teacher."""
    if spec.is_api:
        return cfg.resolve(cfg.teacher.tokenizer) if cfg.teacher.tokenizer else None
    return spec.model_dir()


def decide_kd_path(
    cfg: RunConfig, teacher_dir: Path, student_dir: Path, student_tok=None, teacher_tok=None
) -> tuple[str, str]:
    """``(path, message)`` of :func:`potstill.vocab.kd_path` for this run's teacher and student tokenizers."""

    match = compare_tokenizers(teacher_dir, student_dir, teacher_tok=teacher_tok, student_tok=student_tok)
    return kd_path(match, cfg.train.kd)


def check_kd_tokenizers(
    cfg: RunConfig, spec: ModelSpec | None = None, student_dir: Path | None = None
) -> tuple[str, str]:
    """Preflight for ``kd``: ``(path, message)``, the path being ``kd`` (shared tokenizer, padded
    embeddings truncated), ``sft`` (text-level) or ``uld``; one-line UserError where kd cannot run.
    ``student_dir``: where the student's tokenizer is (default ``student.model``)."""
    teacher_dir = teacher_tokenizer_dir(cfg, spec or teacher_spec(cfg.teacher, cfg.resolve))
    if teacher_dir is None:
        raise UserError(
            "kd needs the teacher's tokenizer: a local teacher directory, or teacher.tokenizer for an "
            "API teacher; or use method 'sft'",
            where="teacher",
        )
    return decide_kd_path(cfg, teacher_dir, student_dir or cfg.resolve(cfg.student.model))


class _StepCounter(TrainerCallback):
    def __init__(self):
        self.start_step, self.steps = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _check_large_student(t) -> None:
    """One-line UserErrors for ``train.lora.quantize`` (QLoRA) before any model is loaded."""
    if t.lora.quantize == "none":
        return
    if not t.lora.enabled:
        raise UserError(
            f"train.lora.quantize={t.lora.quantize} trains LoRA adapters on a quantized student: "
            "set train.lora.enabled: true",
            where="train.lora.quantize",
        )
    if launched() and any(
        os.environ.get(f"ACCELERATE_USE_{k}", "false").lower() == "true" for k in ("FSDP", "DEEPSPEED")
    ):
        raise UserError(
            "train.lora.quantize (QLoRA) runs on one GPU or under DDP (configs/accelerate/ddp.yaml), "
            "not FSDP / DeepSpeed",
            where="train.lora.quantize",
        )
    check_quantize(t.lora.quantize)


def train_student(
    method: Literal["sft", "kd"],
    cfg: RunConfig,
    pairs: list[dict],
    out_dir: Path,
    work_dir: Path,
    provenance: dict | None = None,
    *,
    teacher: ModelSpec | None = None,
    student_dir: Path | None = None,
    student_init: str | None = None,
) -> dict:
    """Train one student with ``method`` on ``pairs`` and export it to ``out_dir``; returns the metrics.

    Response ids are the teacher's own ``response_token_ids`` when the student's tokenizer has
    the teacher's fingerprint, else ``response_text`` re-tokenized by the student. ``kd`` with a
    shared tokenizer (:func:`potstill.vocab.kd_path`: ``same``, or ``padded`` embeddings, the KD term
    seeing the first ``len(tokenizer)`` logits) distils from the live teacher (``train.kd.signal:
    live``), the pairs' ``top_logprobs`` (``topk``: the top-k renormalised at temperature T over the
    k ids) or a signal store; with different tokenizers it trains text-level (cross-entropy on the
    teacher's answers, no teacher loaded; ``train.kd.cross_tokenizer: sft``) or with ULD (``uld``).
    ``training.json`` of a kd student records ``kd_path`` (``kd``, ``sft`` or ``uld``).
    ``teacher`` (default: parsed from the config), ``student_dir`` and ``student_init`` (default
    ``student.model`` and ``student.init``) come from the run context in a pipeline run.
    """
    if method not in ("sft", "kd"):
        raise UserError(f"unknown training method '{method}' (expected 'sft' or 'kd')", where="train.methods")
    out_dir, work_dir = (None if out_dir is None else Path(out_dir)), Path(work_dir)  # out_dir None: a helper rank
    t = cfg.train
    spec = teacher or teacher_spec(cfg.teacher, cfg.resolve)
    s_dir, teacher_dir = Path(student_dir or cfg.resolve(cfg.student.model)), teacher_tokenizer_dir(cfg, spec)
    init = student_init or cfg.student.init
    tok = load_tokenizer(s_dir, padding_side="right")
    teacher_tok = load_tokenizer(teacher_dir) if teacher_dir is not None else None
    same_tok = teacher_tok is not None and tokenizer_fingerprint(teacher_tok) == tokenizer_fingerprint(tok)
    topk = method == "kd" and t.kd.signal == "topk"
    store = kd_route = None
    if method == "kd":
        if teacher_tok is None:
            raise UserError(
                "kd needs the teacher's tokenizer: a local teacher directory, or teacher.tokenizer for an API teacher",
                where="teacher",
            )
        kd_route, kd_message = decide_kd_path(cfg, teacher_dir, s_dir, student_tok=tok, teacher_tok=teacher_tok)
        say(f"  {kd_message}")
        if kd_route != "sft" and spec.is_api and t.kd.signal == "live":
            raise UserError(
                "kd from an API teacher needs train.kd.signal=topk (and teacher.top_logprobs > 0)",
                where="train.kd.signal",
            )
        if topk and not any(p.get("top_logprobs") for p in pairs):
            raise UserError(
                "the pairs have no top_logprobs; rerun generate with teacher.top_logprobs > 0", where="train.kd.signal"
            )
        if t.kd.signal == "store":
            store = open_signal_store(
                cfg.resolve(t.kd.store) if t.kd.store else cfg.run_path / "signals", tok, t.kd.temperature
            )

    uld = kd_route == "uld"  # the teacher reads its own tokenization of each pair
    feats = build_features(
        pairs,
        tok,
        t.max_seq_len,
        reuse_teacher_ids=same_tok,
        topk=topk,
        targets=store,
        teacher_tokenizer=teacher_tok if uld else None,
    )
    response_tokens = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)

    _check_large_student(t)
    # Before any model is loaded: under DeepSpeed ZeRO-3 the arguments turn on zero.Init (partitioned loading).
    args = training_arguments(cfg, work_dir)
    model = load_model(s_dir, cfg.student.dtype, init=init, seed=cfg.seed, quantize=t.lora.quantize)
    params = count_params(model)
    rows = model.get_input_embeddings().num_embeddings
    if max(max(f["input_ids"]) for f in feats) >= rows:
        raise UserError(f"the student's embedding has {rows} rows, fewer than its tokenizer's ids need", str(s_dir))
    if t.lora.enabled:
        model = apply_lora(model, t.lora, gradient_checkpointing=t.gradient_checkpointing)
    teacher = None
    if kd_route in ("kd", "uld") and t.kd.signal == "live":  # kd_route "sft": text-level, no teacher
        teacher = load_model(teacher_dir, cfg.teacher.dtype)

    key = sha256_json(
        {
            "method": method,
            "pairs": sha256_json(pairs),
            "teacher_ids": same_tok,
            "student": str(s_dir),
            "init": init,
            "dtype": cfg.student.dtype,
            "teacher": str(teacher_dir) if method == "kd" else None,
            "train": t.model_dump(
                mode="json", exclude={"epochs", "save_steps", "logging_steps", "report_to", "methods"}
            ),
            "seed": cfg.seed,
        }
    )
    if is_main_process():  # rank 0 keeps the checkpoints' bookkeeping (stale ones removed)
        resume_point(work_dir, key)
    wait_for_everyone()
    resume = latest_checkpoint(work_dir)
    counter = _StepCounter()
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok.pad_token_id, teacher_pad_id=teacher_tok.pad_token_id if uld else None),
        processing_class=tok,
        callbacks=[counter],
        method="sft" if kd_route == "sft" else method,  # text-level kd trains exactly like sft
        teacher=teacher,
        kd=t.kd if kd_route == "kd" else t.kd.model_copy(update={"on_policy_ratio": 0.0}),  # GKD: shared tokenizer
        vocab_size=len(tok),
        uld=uld,
        teacher_vocab_size=len(teacher_tok) if uld else None,
        eos_token_ids={tok.eos_token_id},
    )
    if resume:
        say(f"  resuming {method} training from {resume.name}")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final = final_model(trainer, cfg, s_dir)  # None on the helper ranks of a multi-process launch
    m = result.metrics
    metrics = {
        "method": method,
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "steps_this_run": counter.steps,
        "resumed_from_step": counter.start_step if resume else None,
        "epochs": trainer.state.epoch,
        "runtime_s": m.get("train_runtime"),
        "samples_per_s": m.get("train_samples_per_second"),
        "final_parts": trainer.last_parts,
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "pairs": len(feats),
        "pairs_dropped": len(pairs) - len(feats),
        "response_tokens": response_tokens,
        "response_ids": "teacher" if same_tok else "re-tokenized",
        "params": params,
    }
    if method == "kd":
        metrics["kd"] = t.kd.model_dump(mode="json")
        metrics["kd_path"] = kd_route
        metrics["on_policy_batches"] = trainer.on_policy_batches
    if final is None:  # only the main process exports
        return metrics
    final.config.use_cache = True  # training turned the KV cache off; generation wants it
    with atomic_dir(out_dir) as tmp:
        final.save_pretrained(str(tmp))
        tok.padding_side = "left"  # for generation by later stages
        tok.save_pretrained(str(tmp))
        write_json(tmp / "training.json", {**metrics, "provenance": provenance or {}})
        write_model_card(tmp, method, cfg, metrics, provenance)
    return metrics
