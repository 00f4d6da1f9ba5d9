"""The train stage: one student per method (``sft`` or ``kd``), exported as a plain HF model dir.

``train_student`` tokenizes the pairs with the student's tokenizer, trains with
:class:`~potstill.train.trainer.DistillTrainer` (checkpoints in ``work_dir``; a killed run resumes
from the latest complete ``checkpoint-*`` there), merges LoRA adapters, and writes ``out_dir``
atomically: safetensors weights, tokenizer, ``training.json`` and a ``README.md`` model card.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from transformers import AutoConfig, TrainerCallback

from ..config import RunConfig
from ..errors import UserError
from ..io import atomic_dir, sha256_json, write_json
from ..models import count_params, load_model, load_tokenizer, tokenizer_fingerprint
from ..progress import say
from ..teachers.api import parse_teacher
from .card import write_model_card
from .data import Collator, build_features
from .args import resume_point, training_arguments
from .trainer import DistillTrainer

log = logging.getLogger(__name__)


def teacher_tokenizer_dir(cfg: RunConfig) -> Path | None:
    """Where the teacher's tokenizer lives: its model directory, or ``teacher.tokenizer`` for an API teacher."""
    if parse_teacher(cfg.teacher.model):
        return cfg.resolve(cfg.teacher.tokenizer) if cfg.teacher.tokenizer else None
    return cfg.resolve(cfg.teacher.model)


def _check_shared_tokenizer(cfg: RunConfig, teacher_dir: Path, student_tok, teacher_tok) -> None:
    """UserError unless the teacher and student tokenizers (and usable vocabularies) match."""
    s_dir = cfg.resolve(cfg.student.model)
    reasons = []
    if tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(student_tok):
        reasons.append("tokenizer fingerprints differ")
    if len(teacher_tok) != len(student_tok):
        reasons.append(f"vocab sizes {len(teacher_tok)} vs {len(student_tok)}")
    for name, d in (("teacher", teacher_dir), ("student", s_dir)):
        if not (Path(d) / "config.json").is_file():  # an API teacher's tokenizer-only directory
            continue
        emb = getattr(AutoConfig.from_pretrained(str(d)), "vocab_size", None)
        if emb is not None and emb < len(student_tok):
            reasons.append(f"{name} embedding has {emb} rows for a {len(student_tok)}-token vocabulary")
    if reasons:
        raise UserError(
            f"kd needs the teacher and student to share a tokenizer: {teacher_dir} vs {s_dir} differ "
            f"({'; '.join(reasons)}); use method 'sft' for text-level distillation",
            where="train.methods",
        )


def check_kd_tokenizers(cfg: RunConfig) -> None:
    """Preflight for ``kd``: one-line UserError unless teacher and student share a tokenizer."""
    teacher_dir = teacher_tokenizer_dir(cfg)
    if teacher_dir is None:
        raise UserError("kd needs the teacher's tokenizer: a local teacher directory, or teacher.tokenizer for an "
                        "API teacher; or use method 'sft'", where="teacher")
    student_tok = load_tokenizer(cfg.resolve(cfg.student.model))
    _check_shared_tokenizer(cfg, teacher_dir, student_tok, load_tokenizer(teacher_dir))


class _StepCounter(TrainerCallback):
    def __init__(self):
        self.start_step, self.steps = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _apply_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    conf = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, conf)


def train_student(
    method: Literal["sft", "kd"],
    cfg: RunConfig,
    pairs: list[dict],
    out_dir: Path,
    work_dir: Path,
    provenance: dict | None = None,
) -> dict:
    """Train one student with ``method`` on ``pairs`` and export it to ``out_dir``; returns the metrics.

    Response ids are the teacher's own ``response_token_ids`` when the student's tokenizer has
    the teacher's fingerprint, else ``response_text`` re-tokenized by the student. ``kd`` requires
    a shared tokenizer; its teacher signal is the live teacher (``train.kd.signal: live``) or the
    pairs' ``top_logprobs`` (``topk``: the top-k renormalised at temperature T over the k ids).
    """
    if method not in ("sft", "kd"):
        raise UserError(f"unknown training method '{method}' (expected 'sft' or 'kd')", where="train.methods")
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    t = cfg.train
    s_dir, teacher_dir = cfg.resolve(cfg.student.model), teacher_tokenizer_dir(cfg)
    tok = load_tokenizer(s_dir, padding_side="right")
    teacher_tok = load_tokenizer(teacher_dir) if teacher_dir is not None else None
    same_tok = teacher_tok is not None and tokenizer_fingerprint(teacher_tok) == tokenizer_fingerprint(tok)
    topk = method == "kd" and t.kd.signal == "topk"
    store = None
    if method == "kd" and t.kd.signal == "store":
        from .data import open_signal_store

        store = open_signal_store(cfg.resolve(t.kd.store) if t.kd.store else cfg.run_path / "signals", tok,
                                  t.kd.temperature)
    if method == "kd":
        if teacher_tok is None:
            raise UserError("kd needs the teacher's tokenizer: a local teacher directory, or teacher.tokenizer for an "
                            "API teacher", where="teacher")
        if parse_teacher(cfg.teacher.model) and t.kd.signal == "live":
            raise UserError("kd from an API teacher needs train.kd.signal=topk (and teacher.top_logprobs > 0)",
                            where="train.kd.signal")
        _check_shared_tokenizer(cfg, teacher_dir, tok, teacher_tok)
        if topk and not any(p.get("top_logprobs") for p in pairs):
            raise UserError(
                "the pairs have no top_logprobs; rerun generate with teacher.top_logprobs > 0", where="train.kd.signal"
            )

    feats = build_features(pairs, tok, t.max_seq_len, reuse_teacher_ids=same_tok, topk=topk, targets=store)
    response_tokens = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)

    model = load_model(s_dir, cfg.student.dtype, init=cfg.student.init, seed=cfg.seed)
    params = count_params(model)
    rows = model.get_input_embeddings().num_embeddings
    if max(max(f["input_ids"]) for f in feats) >= rows:
        raise UserError(f"the student's embedding has {rows} rows, fewer than its tokenizer's ids need", str(s_dir))
    if t.lora.enabled:
        model = _apply_lora(model, t.lora)
    teacher = None
    if method == "kd" and t.kd.signal == "live":
        teacher = load_model(teacher_dir, cfg.teacher.dtype)

    key = sha256_json(
        {
            "method": method,
            "pairs": sha256_json(pairs),
            "teacher_ids": same_tok,
            "student": str(s_dir),
            "init": cfg.student.init,
            "dtype": cfg.student.dtype,
            "teacher": str(teacher_dir) if method == "kd" else None,
            "train": t.model_dump(mode="json", exclude={"epochs", "save_steps", "logging_steps", "report_to", "methods"}),
            "seed": cfg.seed,
        }
    )
    resume = resume_point(work_dir, key)
    counter = _StepCounter()
    trainer = DistillTrainer(
        model=model,
        args=training_arguments(cfg, work_dir),
        train_dataset=feats,
        data_collator=Collator(tok.pad_token_id),
        processing_class=tok,
        callbacks=[counter],
        method=method,
        teacher=teacher,
        alpha=t.kd.alpha,
        temperature=t.kd.temperature,
        vocab_size=len(tok),
        divergence=t.kd.divergence,
        beta=t.kd.beta,
        skew_alpha=t.kd.skew_alpha,
        chunk_size=t.kd.chunk_size,
    )
    if resume:
        say(f"  resuming {method} training from {resume.name}")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final = trainer.model
    if t.lora.enabled:
        final = final.merge_and_unload()
    final.eval()
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
    with atomic_dir(out_dir) as tmp:
        final.save_pretrained(str(tmp))
        tok.padding_side = "left"  # for generation by later stages
        tok.save_pretrained(str(tmp))
        write_json(tmp / "training.json", {**metrics, "provenance": provenance or {}})
        write_model_card(tmp, method, cfg, metrics, provenance)
    return metrics
