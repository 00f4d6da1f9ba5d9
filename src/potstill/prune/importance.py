"""Activation-based importance of layers, hidden channels, attention heads and MLP channels.

One calibration pass over the teacher with forward hooks, no gradients (Minitron, Muralidharan et
al. 2024). Padding positions never count. Higher is more important everywhere.

* layer (``cosine``): block importance 1 - mean over tokens of cos(layer input, layer output)
  (ShortGPT); a layer that leaves the residual stream as it was scores 0. ``loss``: the increase of
  the calibration LM loss when only that layer is skipped (one extra pass per layer).
* hidden channel: the output of every RMSNorm (two per layer and the final one), aggregated per
  norm; :meth:`Importance.hidden` sums the norms of the layers kept.
* attention head: the L2 norm over ``head_dim`` of the head's output (the input of ``o_proj``)
  at each token, then aggregated.
* MLP channel: ``act_fn(gate) * up``, the input of ``down_proj``, aggregated.

Aggregation over tokens (:class:`~potstill.prune.settings.PruneSettings` ``aggregation``):
``l2_mean`` takes the L2 norm over each sequence's tokens and then the mean over sequences;
``mean_abs`` the mean absolute value over all tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..progress import track
from .calibration import batches


@dataclass
class Importance:
    layers: torch.Tensor  # [L]
    norms: torch.Tensor  # [2L + 1, D]: layer l's input norm at 2l, its post-attention norm at 2l + 1, final norm last
    heads: torch.Tensor  # [L, H] query heads
    mlp: torch.Tensor  # [L, I]
    norm_input_ms: torch.Tensor  # [2L + 1, D] mean square of each norm's input per channel (for rescale_norms)
    tokens: int

    def hidden(self, kept_layers: list[int]) -> torch.Tensor:
        """[D]: summed over the norms that remain after dropping layers (the final norm always)."""
        rows = [r for i in kept_layers for r in (2 * i, 2 * i + 1)] + [self.norms.shape[0] - 1]
        return self.norms[rows].sum(0)


class _Aggregate:
    """Running aggregate of per-token activations ``a [B, T, C]`` over the non-padding positions
    (``l2_mean``, ``mean_abs``, or ``mean_square``: the mean of a^2 over tokens)."""

    def __init__(self, kind: str):
        self.kind, self.total, self.count = kind, None, 0

    def add(self, a: torch.Tensor, mask: torch.Tensor) -> None:
        a, m = a.float(), mask.to(a.device, torch.float32).unsqueeze(-1)
        if self.kind == "l2_mean":
            part, n = (a.square() * m).sum(1).sqrt().sum(0), a.shape[0]
        elif self.kind == "mean_square":
            part, n = (a.square() * m).sum((0, 1)), int(mask.sum())
        else:  # mean_abs
            part, n = (a.abs() * m).sum((0, 1)), int(mask.sum())
        self.total = part if self.total is None else self.total + part
        self.count += n

    def value(self) -> torch.Tensor:
        return (self.total / max(self.count, 1)).cpu()


@torch.no_grad()
def measure(model, seqs: list[list[int]], settings, pad_id: int) -> Importance:
    """Run the calibration sequences through ``model`` (eval mode) and return every importance."""
    inner = model.model
    layers = list(inner.layers)
    head_dim = layers[0].self_attn.head_dim
    state: dict = {"mask": None}
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    norms = [layer_norm for layer in layers for layer_norm in (layer.input_layernorm, layer.post_attention_layernorm)]
    norms.append(inner.norm)
    norm_agg = [_Aggregate(settings.aggregation) for _ in norms]
    norm_ms = [_Aggregate("mean_square") for _ in norms]
    head_agg = [_Aggregate(settings.aggregation) for _ in layers]
    mlp_agg = [_Aggregate(settings.aggregation) for _ in layers]
    hooks = []

    def on_layer(i):
        def hook(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
            cos_sum[i] += float((cos * state["mask"]).sum())

        return hook

    def on_norm(i):
        def hook(module, args, out):
            norm_agg[i].add(out, state["mask"])
            norm_ms[i].add(args[0], state["mask"])

        return hook

    def on_o_proj(i):
        def hook(module, args):
            a = args[0]
            head_agg[i].add(a.view(*a.shape[:-1], -1, head_dim).float().norm(dim=-1), state["mask"])

        return hook

    def on_down_proj(i):
        def hook(module, args):
            mlp_agg[i].add(args[0], state["mask"])

        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(on_layer(i), with_kwargs=True))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o_proj(i)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_down_proj(i)))
    for i, n in enumerate(norms):
        hooks.append(n.register_forward_hook(on_norm(i)))
    tokens = 0
    try:
        with track(len(seqs), "prune: importance", unit="tok") as bar:
            for ids, mask in batches(seqs, settings.batch_size, pad_id, model.device):
                state["mask"] = mask.float()
                inner(input_ids=ids, attention_mask=mask, use_cache=False)
                tokens += int(mask.sum())
                bar.advance(len(ids), tokens=int(mask.sum()))
    finally:
        for h in hooks:
            h.remove()
    layer_scores = 1.0 - cos_sum / max(tokens, 1)
    if settings.depth_metric == "loss":
        layer_scores = skip_loss_increase(model, seqs, settings, pad_id)
    return Importance(
        layers=layer_scores.float(),
        norms=torch.stack([a.value() for a in norm_agg]),
        heads=torch.stack([a.value() for a in head_agg]),
        mlp=torch.stack([a.value() for a in mlp_agg]),
        norm_input_ms=torch.stack([a.value() for a in norm_ms]),
        tokens=tokens,
    )


@torch.no_grad()
def lm_loss(model, seqs: list[list[int]], batch_size: int, pad_id: int) -> float:
    """Mean next-token cross-entropy over every non-padding target token."""
    total, count = 0.0, 0
    for ids, mask in batches(seqs, batch_size, pad_id, model.device):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    return total / max(count, 1)


def skip_loss_increase(model, seqs: list[list[int]], settings, pad_id: int) -> torch.Tensor:
    """[L]: calibration LM loss with layer ``i`` skipped (its output := its input) minus the full model's."""
    base = lm_loss(model, seqs, settings.batch_size, pad_id)
    out = []
    layers = list(model.model.layers)
    with track(len(layers), "prune: layer skip losses", unit="layer") as bar:
        for layer in layers:
            h = layer.register_forward_hook(_identity, with_kwargs=True)
            try:
                out.append(lm_loss(model, seqs, settings.batch_size, pad_id) - base)
            finally:
                h.remove()
            bar.advance(1)
    return torch.tensor(out, dtype=torch.float64)


def _identity(module, args, kwargs, out):
    x = args[0] if args else kwargs["hidden_states"]
    return (x, *out[1:]) if isinstance(out, tuple) else x
