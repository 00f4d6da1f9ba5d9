"""On-policy distillation (GKD, Agarwal et al. 2024): the student writes the response, the teacher grades it.

With ``train.kd.on_policy_ratio = lambda``, each KD micro-batch is, with probability lambda,
rebuilt from its own prompts: the student samples a response (temperature
``on_policy_temperature``, at most ``on_policy_max_new_tokens`` tokens, cut after its first EOS),
and the loss is the divergence between the live teacher's and the student's distributions on
those tokens (no cross-entropy: there is no reference answer). Otherwise the batch is the usual
off-policy one (the teacher's answers). This fixes the train/inference mismatch of pure
off-policy KD: the student also learns on the prefixes it produces itself.
"""

from __future__ import annotations

import torch

from ..losses import IGNORE_INDEX


def split_prompts(input_ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Each row's prompt: the tokens before its first response label (rows are right-padded)."""
    out = []
    for ids, lab in zip(input_ids, labels):
        resp = torch.nonzero(lab != IGNORE_INDEX).flatten()
        start = int(resp[0]) if len(resp) else int(lab.shape[0])
        out.append(ids[:start])
    return out


@torch.no_grad()
def sample_responses(
    model, prompts: list[torch.Tensor], pad_id: int, eos_ids: set[int], max_new_tokens: int, temperature: float
) -> list[list[int]]:
    """The student's sampled responses (ids, cut after the first EOS, which is kept)."""
    width = max(len(p) for p in prompts)
    device = prompts[0].device
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding for generation
        ids[i, width - len(p) :] = p
        att[i, width - len(p) :] = 1
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=att,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
        )
    finally:
        model.train(was_training)
    responses = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
        responses.append(row[:cut])
    return responses


def on_policy_batch(prompts: list[torch.Tensor], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (prompt masked) of prompt + response."""
    rows = [p.tolist() + r for p, r in zip(prompts, responses)]
    n = max(len(r) for r in rows)
    device = prompts[0].device
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long, device=device)
    att = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        m = len(p) + len(r)
        ids[i, :m] = torch.tensor(rows[i], device=device)
        att[i, :m] = 1
        labels[i, len(p) : m] = torch.tensor(r, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": att, "labels": labels}
