"""Teacher-forced measures on held-out teacher text: top-1 token agreement and KL(teacher || student).

The teacher's own answers to the evaluation prompts (never trained on) are fed, after the prompt,
to the teacher and to each student in one forward pass each (batched, right-padded, no grad). At
every response position (the answer's tokens and, when the teacher stopped by itself, its EOS):

* **top-1 agreement** - the student's most likely next token equals the teacher's;
* **KL(teacher || student)** - ``sum_v p_t(v) (log p_t(v) - log p_s(v))`` in nats, at temperature 1,

both averaged over all response tokens of the split (token-weighted). Sequences are built as
training builds them (:func:`potstill.train.data.pair_ids`, the answer re-tokenized). Vocabularies
are compared on the tokenizer's ids (padded embedding rows beyond ``len(tokenizer)`` are dropped
and each distribution renormalised over the shared ids). A model whose tokenizer differs from the
teacher's (fingerprint) gets no measure; neither does an API teacher (no logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..chat import pair_ids
from ..models import default_device, load_model, load_tokenizer, tokenizer_fingerprint

MAX_TOKENS = 1024  # longest sequence scored (longer ones keep their last MAX_TOKENS tokens)


def _sequences(tokenizer, records: Sequence[dict], teacher_rows: Sequence[dict]) -> list[tuple[list[int], int]]:
    """(ids, response start) per prompt; empty answers are skipped."""

    out = []
    for rec, ans in zip(records, teacher_rows):
        pair = {
            "messages": rec["messages"],
            "response_text": ans.get("text") or "",
            "finish_reason": ans.get("finish_reason", "stop"),
        }
        prompt, resp = pair_ids(tokenizer, pair, reuse_teacher_ids=False)
        if not resp:
            continue
        ids = prompt + resp
        start = len(prompt)
        if len(ids) > MAX_TOKENS:
            cut = len(ids) - MAX_TOKENS
            ids, start = ids[cut:], max(1, start - cut)
        out.append((ids, start))
    return out


def _batch(seqs: list[tuple[list[int], int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    pred = torch.zeros((len(seqs), width), dtype=torch.bool)  # position p predicts token p + 1
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        pred[i, start - 1 : len(s) - 1] = True
    return ids.to(device), att.to(device), pred.to(device)


def _log_probs(model, ids, att, pred, vocab: int) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=att).logits
    return torch.log_softmax(logits[pred][:, :vocab].float(), dim=-1)  # [tokens, vocab]


@torch.inference_mode()
def teacher_forced_measures(
    teacher,
    students: dict,
    tokenizer,
    records: Sequence[dict],
    teacher_rows: Sequence[dict],
    batch_size: int = 16,
    device=None,
) -> dict[str, dict]:
    """``{name: {"top1_agreement", "kl", "tokens"}}`` for each model in ``students`` against ``teacher``.

    ``teacher`` and ``students`` are loaded causal LMs sharing ``tokenizer``; ``teacher_rows`` are the
    teacher's answers (``{"text", "finish_reason"}``) to ``records``, in order.
    """
    device = device or next(teacher.parameters()).device
    seqs = sorted(_sequences(tokenizer, records, teacher_rows), key=lambda x: len(x[0]))
    vocab = min(
        [len(tokenizer), teacher.get_output_embeddings().weight.shape[0]]
        + [m.get_output_embeddings().weight.shape[0] for m in students.values()]
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    agree = {n: 0 for n in students}
    kl = {n: 0.0 for n in students}
    tokens = 0
    for i in range(0, len(seqs), batch_size):
        ids, att, pred = _batch(seqs[i : i + batch_size], pad, device)
        lp_t = _log_probs(teacher, ids, att, pred, vocab)
        top_t = lp_t.argmax(-1)
        p_t = lp_t.exp()
        tokens += lp_t.shape[0]
        for name, model in students.items():
            lp_s = _log_probs(model, ids, att, pred, vocab)
            agree[name] += int((lp_s.argmax(-1) == top_t).sum())
            kl[name] += float((p_t * (lp_t - lp_s)).sum())
    return {
        n: {
            "top1_agreement": round(agree[n] / tokens, 6) if tokens else None,
            "kl": round(kl[n] / tokens, 6) if tokens else None,
            "tokens": tokens,
        }
        for n in students
    }


def run_teacher_forced(
    models: dict[str, dict],
    splits: dict[str, list[dict]],
    teacher_answers: dict[str, list[dict]],
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """Load the local teacher and every other model of ``models`` (the eval stage's specs) and measure each split.

    Returns ``({split: {model: measures}}, notes)``; a model whose tokenizer differs from the
    teacher's is left out with a note, and an API teacher gives no measures at all.
    """

    name_t, spec_t = next((n, s) for n, s in models.items() if s["role"] == "teacher")
    if spec_t.get("api"):
        return {}, ["teacher-forced measures need the teacher's logits: not available from an API teacher"]
    device = default_device()
    tok = load_tokenizer(spec_t["path"], padding_side="right")
    fp = tokenizer_fingerprint(tok)
    notes, students = [], {}
    for name, spec in models.items():
        if name == name_t:
            continue
        if tokenizer_fingerprint(load_tokenizer(spec["path"])) != fp:
            notes.append(f"{name}: tokenizer differs from the teacher's, no teacher-forced measures")
            continue
        students[name] = (
            load_model(spec["path"], dtype=spec.get("dtype", "float32"), init=spec.get("init", "pretrained"), seed=seed)
            .to(device)
            .eval()
        )
    if not students:
        return {}, notes
    teacher = load_model(spec_t["path"], dtype=spec_t.get("dtype", "float32")).to(device).eval()
    out = {
        split: teacher_forced_measures(teacher, students, tok, records, teacher_answers[split], batch_size, device)
        for split, records in splits.items()
    }
    del teacher, students
    return out, notes
