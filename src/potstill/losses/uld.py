"""Universal Logit Distillation (Boizard et al. 2024): KD between models with different tokenizers.

Two vocabularies have no shared index, so ULD compares the *shapes* of the two distributions:
each position's probabilities are sorted in decreasing order, the shorter vector is padded with
zeros, and the loss is the L1 distance between the sorted vectors (the closed form of the
Wasserstein-1 distance when the cost between any two distinct tokens is 1, after the optimal
rank matching). Positions are aligned by their index in the response: the i-th response token of
the student's tokenization is matched with the i-th of the teacher's, up to the shorter of the two
(the paper's alignment; tokens past it get cross-entropy only).

:func:`uld_distance` is the per-position distance; :func:`uld_loss` aligns two batches of
response logits and returns the summed distance and the number of aligned positions.
"""

from __future__ import annotations

import torch

from .divergence import IGNORE_INDEX


def uld_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[N]`` L1 distances between the sorted softmax(logits / T) of ``[N, Vs]`` and ``[N, Vt]``.

    Equivalent to zero-padding the smaller vocabulary: the common ranks are compared term by
    term, and the larger vocabulary's remaining probability mass is added as it is.
    """
    ps = torch.softmax(_wide(student_logits) / temperature, dim=-1).sort(dim=-1, descending=True).values
    pt = torch.softmax(_wide(teacher_logits) / temperature, dim=-1).sort(dim=-1, descending=True).values
    k = min(ps.shape[-1], pt.shape[-1])
    dist = (ps[..., :k] - pt[..., :k]).abs().sum(-1)
    return dist + ps[..., k:].sum(-1) + pt[..., k:].sum(-1)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32; float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def response_positions(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> list[torch.Tensor]:
    """Per row, the positions whose logits predict a response token (``labels[:, 1:] != ignore``)."""
    return [torch.nonzero(row != ignore_index).flatten() for row in labels[:, 1:]]


def uld_loss(
    student_logits: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_labels: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, int]:
    """``(sum of ULD distances, aligned positions)`` over a batch.

    ``*_logits`` are ``[B, L, V]`` (position t predicts token t + 1), ``*_labels`` ``[B, L]`` with
    ``ignore_index`` outside the response. Row b's i-th student response prediction is paired with
    its i-th teacher response prediction, for i below the shorter response.
    """
    s_pos, t_pos = response_positions(student_labels, ignore_index), response_positions(teacher_labels, ignore_index)
    s_rows, t_rows = [], []
    for b, (sp, tp) in enumerate(zip(s_pos, t_pos)):
        n = min(len(sp), len(tp))
        if n:
            s_rows.append(student_logits[b, sp[:n]])
            t_rows.append(teacher_logits[b, tp[:n]])
    if not s_rows:
        return student_logits.sum() * 0.0, 0
    s, t = torch.cat(s_rows), torch.cat(t_rows)
    return uld_distance(s, t, temperature).sum(), int(s.shape[0])
