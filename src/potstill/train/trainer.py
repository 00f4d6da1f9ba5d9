"""The transformers Trainer with a distillation loss (SFT, or KD from a live teacher / sparse targets).

Normalisation is exact under padding and gradient accumulation: :meth:`DistillTrainer.compute_loss`
returns the *sum* of per-token losses divided by the number of response tokens in the whole
global batch (``num_items_in_batch``, counted by the Trainer over every micro-batch of the
optimizer step), so ``batch 4 x accum 1`` and ``batch 1 x accum 4`` give the same gradients.

The loss is computed from the models' final hidden states and lm_head weights a chunk of tokens at
a time (:func:`potstill.losses.chunked_distillation_loss`), so no ``[tokens, vocab]`` logits
tensor of the student (or of a live teacher) is materialised. Models whose logits are not
``hidden @ lm_head.weight.T (+ bias)`` (logit soft-capping or scaling, an adapted or quantized
lm_head, no ``logits_to_keep``) are detected and use the full-logit path instead, with the same loss.

``TrainingArguments`` and the resume helpers live in :mod:`potstill.train.args`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Literal

import torch
from transformers import Trainer

from ..config import KDSettings
from ..distributed import prepare_teacher, sharded
from ..losses import (
    IGNORE_INDEX,
    check_divergence,
    chunked_distillation_loss,
    cross_entropy,
    distillation_loss,
    topk_target_probs,
)
from ..losses.uld import uld_loss
from . import onpolicy

log = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP / accelerate / PEFT wrappers (the one that owns ``forward``'s signature)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def lm_head_of(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output projection if it is a plain ``nn.Linear`` (and ``forward`` takes
    ``logits_to_keep``), else None: the chunked loss then cannot reproduce the model's logits."""
    base = _unwrap(model)
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return None
    get = getattr(base, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if type(head) is torch.nn.Linear else None


class DistillTrainer(Trainer):
    """A :class:`transformers.Trainer` whose loss is :func:`potstill.losses.chunked_distillation_loss`
    (or, for models whose logits it cannot reproduce, :func:`potstill.losses.distillation_loss`).

    Args:
        method: ``"sft"`` (cross-entropy on the response) or ``"kd"``.
        teacher: the live teacher model (``kd`` with signal ``live``); kept in eval mode without
            gradients and moved to the training device. ``None`` for ``sft`` and offline KD (the
            batches then carry ``topk_ids`` / ``topk_logprobs`` (renormalised at T) or a sparse
            target ``target_ids`` / ``target_probs`` already at T, from the collator).
        kd: the run's :class:`potstill.config.KDSettings` (frozen), read as it is down to the loss:
            ``alpha``, ``temperature``, ``divergence`` / ``beta`` / ``skew_alpha`` (offline signals
            support ``forward_kl`` only), ``chunk_size``, and GKD's ``on_policy_ratio`` /
            ``on_policy_temperature`` / ``on_policy_max_new_tokens`` (:mod:`potstill.train.onpolicy`:
            needs the live teacher and a shared tokenizer). Default: ``KDSettings()``.
        vocab_size: the tokenizer's vocabulary size; the KD term ignores logits beyond it.
        chunked: False forces the full-logit path (same loss; for comparisons).
        uld: the teacher has another tokenizer: the KD term is :func:`potstill.losses.uld.uld_loss`
            between the student's logits on its own tokens and the live teacher's on the teacher's
            tokens (batches carry ``t_input_ids``, ``t_attention_mask``, ``t_labels`` from
            :func:`potstill.train.data.add_teacher_view`).
        teacher_vocab_size: the teacher tokenizer's size (ULD ignores the teacher's padded rows).
        eos_token_ids: the student's end-of-sequence ids (on-policy sampling stops there).
        Other arguments go to :class:`transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        method: Literal["sft", "kd"] = "sft",
        teacher: torch.nn.Module | None = None,
        kd: KDSettings | None = None,
        vocab_size: int | None = None,
        chunked: bool = True,
        uld: bool = False,
        teacher_vocab_size: int | None = None,
        eos_token_ids: set[int] | None = None,
        **kwargs,
    ):
        kd = kd if kd is not None else KDSettings()
        check_divergence(kd.divergence, kd.beta, kd.skew_alpha)
        if (uld or kd.on_policy_ratio > 0) and method == "kd" and teacher is None:
            raise ValueError("cross-tokenizer (ULD) and on-policy KD need method 'kd' with a live teacher")
        if uld and kd.on_policy_ratio > 0:
            raise ValueError("on-policy KD needs a shared tokenizer (the teacher scores the student's own tokens)")
        super().__init__(*args, **kwargs)
        self.method, self.kd, self.vocab_size = method, kd, vocab_size
        self.uld, self.teacher_vocab_size = uld and method == "kd", teacher_vocab_size
        self.on_policy_ratio = kd.on_policy_ratio if method == "kd" else 0.0
        self.eos_token_ids = set(eos_token_ids or ())
        self.on_policy_batches = 0
        self._coin = torch.Generator().manual_seed(int(self.args.seed) + 7919)
        # FSDP / ZeRO-3 shard the lm_head weights outside forward: the chunked loss cannot read them.
        self.chunked = chunked and sharded(self.accelerator) is None
        # The live teacher: eval mode, no grads, on this rank's device, never DDP-wrapped (sharded
        # for inference under FSDP2 / DeepSpeed ZeRO-3): potstill.distributed.prepare_teacher.
        self.teacher = None if teacher is None else prepare_teacher(teacher, self.accelerator)
        # Always have the Trainer count target tokens over the global batch (num_items_in_batch);
        # with it, training_step treats our loss as already scaled for gradient accumulation.
        self.model_accepts_loss_kwargs = True
        self._parts: dict[str, torch.Tensor] = {}
        self._part_tokens = 0
        self.last_parts: dict[str, float] = {}
        self._head_ok: dict[str, bool] = {}  # "student"/"teacher" -> chunked path verified on a batch

    # -----------------------------------------------------------------------------------------

    def _hidden(self, who: str, model, input_ids, attention_mask):
        """``(final hidden states [B, L, H], lm_head)`` without full logits, or None if this model's
        logits are not ``hidden @ W.T + b`` (checked once, on the last position's logits)."""
        if not self.chunked or self._head_ok.get(who) is False:
            return None
        head = lm_head_of(model)
        if head is None:
            self._head_ok[who] = False
            log.info("%s: lm_head is not a plain Linear; the loss uses full logits", who)
            return None
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1] if out.hidden_states else None
        if who not in self._head_ok:
            ok = hidden is not None and hidden.shape[:2] == input_ids.shape and out.logits.shape[1] == 1
            if ok:
                with torch.no_grad():
                    mine = torch.nn.functional.linear(hidden[:, -1:], head.weight, head.bias).float()
                    theirs = out.logits[:, -1:].float()
                    ok = bool(torch.allclose(mine, theirs, rtol=1e-3, atol=1e-3 * (1.0 + float(theirs.abs().max()))))
            self._head_ok[who] = ok
            if not ok:
                log.warning(
                    "%s: logits are not hidden_states @ lm_head (soft-capping/scaling?); the loss uses full logits", who
                )
                return None
        return hidden, head

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sum of per-token losses over response tokens / response tokens in the global batch."""
        inputs = dict(inputs)
        weight = 1.0  # an on-policy micro-batch keeps the weight its off-policy tokens had in the global batch
        kd_spec = self.kd
        if (
            self.on_policy_ratio > 0
            and model.training
            and float(torch.rand(1, generator=self._coin)) < self.on_policy_ratio
        ):
            n_orig = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            inputs = self._on_policy_inputs(model, inputs)
            n_new = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            weight, kd_spec = n_orig / max(n_new, 1), self.kd.model_copy(update={"alpha": 1.0})  # divergence only
            self.on_policy_batches += 1
        if self.uld:
            return self._uld_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        topk_ids = inputs.pop("topk_ids", None)
        topk_lps = inputs.pop("topk_logprobs", None)
        target_ids = inputs.pop("target_ids", None)
        target_probs = inputs.pop("target_probs", None)
        ids, att = inputs["input_ids"], inputs.get("attention_mask")
        kd = self.method == "kd"
        if kd and self.teacher is None and topk_ids is None and target_probs is None:
            raise RuntimeError("kd needs a live teacher, top-k log-probs or sparse targets in the batch")
        # Position t predicts token t + 1 (labels[:, 0] is always a prompt token, so nothing is lost).
        targets = labels[:, 1:]
        common = dict(kd=kd_spec, vocab_size=self.vocab_size, ignore_index=IGNORE_INDEX)
        chunked = self.chunked and not return_outputs
        teacher = student = None
        if chunked and kd and self.teacher is not None:
            with torch.no_grad():
                teacher = self._hidden("teacher", self.teacher, ids, att)
            chunked = teacher is not None
        if chunked:
            student = self._hidden("student", model, ids, att)
        outputs = None
        if student is not None:
            hidden, head = student
            kw = {}
            if kd and self.teacher is not None:
                t_hidden, t_head = teacher
                kw = dict(teacher_hidden=t_hidden[:, :-1], teacher_weight=t_head.weight, teacher_bias=t_head.bias)
            elif kd and target_probs is not None:
                kw = dict(
                    target_ids=None if target_ids is None else target_ids[:, 1:], target_probs=target_probs[:, 1:]
                )
            elif kd:
                kw = dict(
                    target_ids=topk_ids[:, 1:], target_probs=topk_target_probs(topk_lps[:, 1:], kd_spec.temperature)
                )
            total, n_local, parts = chunked_distillation_loss(
                hidden[:, :-1], head.weight, targets, bias=head.bias, chunk_size=kd_spec.chunk_size, **common, **kw
            )
        else:
            outputs = model(input_ids=ids, attention_mask=att, use_cache=False)
            kw = {}
            if kd and self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(input_ids=ids, attention_mask=att, use_cache=False)
                kw["teacher_logits"] = t_out.logits[:, :-1]
            elif kd and target_probs is not None:
                kw = dict(
                    target_ids=None if target_ids is None else target_ids[:, 1:], target_probs=target_probs[:, 1:]
                )
            elif kd:
                kw["teacher_ids"], kw["teacher_logprobs"] = topk_ids[:, 1:], topk_lps[:, 1:]
            total, n_local, parts = distillation_loss(outputs.logits[:, :-1], targets, **common, **kw)
        loss = self._normalize(total * weight if weight != 1.0 else total, n_local, parts, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _normalize(self, total, n_local, parts: dict, num_items_in_batch):
        """``total`` / response tokens of the global batch (DDP-aware); accumulates the logged parts."""
        denom = num_items_in_batch if num_items_in_batch is not None else n_local
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
        loss = total / (denom.clamp(min=1) if torch.is_tensor(denom) else max(denom, 1))
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch is summed over processes while DDP averages gradients over them.
            loss = loss * self.accelerator.num_processes
        for key, value in parts.items():  # kept as tensors: no device sync per micro-batch
            self._parts[key] = self._parts.get(key, 0) + value
        self._part_tokens = self._part_tokens + (n_local.detach() if torch.is_tensor(n_local) else n_local)
        return loss

    def _on_policy_inputs(self, model, inputs: dict) -> dict:
        """The micro-batch rebuilt from its prompts and the student's own sampled responses (GKD)."""
        pad = self.processing_class.pad_token_id
        prompts = onpolicy.split_prompts(inputs["input_ids"], inputs["labels"])
        responses = onpolicy.sample_responses(
            self.accelerator.unwrap_model(model),
            prompts,
            pad,
            self.eos_token_ids,
            self.kd.on_policy_max_new_tokens,
            self.kd.on_policy_temperature,
        )
        return onpolicy.on_policy_batch(prompts, responses, pad)

    def _uld_loss(self, model, inputs: dict, return_outputs: bool, num_items_in_batch):
        """``(1 - alpha) * CE + alpha * ULD`` on full logits (teacher on its own tokenization)."""
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
        logits = outputs.logits if self.vocab_size is None else outputs.logits[..., : self.vocab_size]
        ce = cross_entropy(logits[:, :-1], labels[:, 1:]).sum()
        with torch.no_grad():
            t_logits = self.teacher(
                input_ids=inputs["t_input_ids"], attention_mask=inputs["t_attention_mask"], use_cache=False
            ).logits
        if self.teacher_vocab_size is not None:
            t_logits = t_logits[..., : self.teacher_vocab_size]
        uld, _ = uld_loss(logits, labels, t_logits, inputs["t_labels"], self.kd.temperature)
        total = (1.0 - self.kd.alpha) * ce + self.kd.alpha * uld
        n_local = (labels[:, 1:] != IGNORE_INDEX).sum()
        loss = self._normalize(total, n_local, {"ce": ce.detach(), "uld": uld.detach()}, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the per-token means of the loss parts (``ce``, ``kd``) since the last log (summed over
        the processes of a multi-process run: every rank logs at the same steps)."""
        if self.accelerator.num_processes > 1 and self._parts:
            keys = sorted(self._parts)
            local = [
                torch.as_tensor(v).detach().double().reshape(()).cpu()
                for v in (*map(self._parts.get, keys), self._part_tokens)
            ]
            total = self.accelerator.reduce(torch.stack(local).to(self.accelerator.device), "sum").cpu()
            self._parts, self._part_tokens = dict(zip(keys, total[:-1])), total[-1]
        n = int(self._part_tokens)
        if n:
            self.last_parts = {f"{k}_per_token": float(v) / n for k, v in self._parts.items()}
            logs = {**logs, **{k: round(v, 6) for k, v in self.last_parts.items()}}
            self._parts, self._part_tokens = {}, 0
        super().log(logs, *args, **kwargs)
