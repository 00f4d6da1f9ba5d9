"""Universal Logit Distillation against a float64 reference written from the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potstill.losses import IGNORE_INDEX
from potstill.losses.uld import uld_distance, uld_loss


def reference(s_logits: np.ndarray, t_logits: np.ndarray, temperature: float) -> np.ndarray:
    """Sort each softmax decreasingly, zero-pad to the larger vocabulary, sum |difference|."""

    def probs(x):
        z = np.exp((x - x.max(-1, keepdims=True)) / temperature)
        return z / z.sum(-1, keepdims=True)

    ps, pt = -np.sort(-probs(s_logits), -1), -np.sort(-probs(t_logits), -1)
    v = max(ps.shape[-1], pt.shape[-1])
    ps = np.pad(ps, [(0, 0), (0, v - ps.shape[-1])])
    pt = np.pad(pt, [(0, 0), (0, v - pt.shape[-1])])
    return np.abs(ps - pt).sum(-1)


@pytest.mark.parametrize("vs,vt,temperature", [(50, 80, 1.0), (80, 50, 2.0), (64, 64, 0.5)])
def test_uld_distance_matches_float64_reference(vs, vt, temperature):
    g = torch.Generator().manual_seed(vs + vt)
    s = torch.randn(7, vs, generator=g, dtype=torch.float64) * 3
    t = torch.randn(7, vt, generator=g, dtype=torch.float64) * 3
    got = uld_distance(s, t, temperature)
    assert got.numpy() == pytest.approx(reference(s.numpy(), t.numpy(), temperature), abs=1e-6)
    # invariant to how either vocabulary is ordered: only the shape of the distribution counts
    perm = torch.randperm(vt, generator=g)
    assert uld_distance(s, t[:, perm], temperature).numpy() == pytest.approx(got.numpy(), abs=1e-6)
    assert uld_distance(t, t, temperature).abs().max() < 1e-6


def test_uld_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 20, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: uld_distance(x, t, 1.5).sum(), (s,))


def test_uld_loss_aligns_responses_by_index():
    g = torch.Generator().manual_seed(1)
    s_logits, t_logits = torch.randn(2, 6, 10, generator=g), torch.randn(2, 8, 13, generator=g)
    x = IGNORE_INDEX
    # row 0: student response tokens at 3..5 (3), teacher at 4..7 (4) -> 3 aligned pairs
    # row 1: student response at 2..5 (4), teacher at 6..7 (2) -> 2 aligned pairs
    s_labels = torch.tensor([[x, x, x, 1, 2, 3], [x, x, 1, 2, 3, 4]])
    t_labels = torch.tensor([[x, x, x, x, 1, 2, 3, 4], [x, x, x, x, x, x, 1, 2]])
    total, n = uld_loss(s_logits, s_labels, t_logits, t_labels, temperature=1.0)
    assert n == 5
    # position t predicts token t + 1: response token at index j is predicted at j - 1
    want = (
        uld_distance(s_logits[0, [2, 3, 4]], t_logits[0, [3, 4, 5]]).sum()
        + uld_distance(s_logits[1, [1, 2]], t_logits[1, [5, 6]]).sum()
    )
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    empty, n0 = uld_loss(s_logits, torch.full_like(s_labels, x), t_logits, t_labels)
    assert n0 == 0 and float(empty) == 0.0
