"""Choose what to keep from the importance scores, and cut the teacher's weights and config to it.

Supported: decoder-only models with Llama's module names (``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM``; Qwen2's q/k/v biases are cut with their rows). ``head_dim`` never changes.
Kept indices are in the teacher's order, so keeping everything gives back the teacher exactly.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch

from ..errors import UserError
from .importance import Importance
from .settings import Shape

SUPPORTED = ("llama", "mistral", "qwen2")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def check_supported(config) -> None:
    if getattr(config, "model_type", None) not in SUPPORTED:
        raise UserError(
            f"cannot prune a '{getattr(config, 'model_type', '?')}' model: pruning supports "
            f"{', '.join(SUPPORTED)} (Llama-style module names)",
            "student.init",
        )


@dataclass
class Kept:
    """What survives, as indices into the teacher's: ``heads[j]`` / ``kv_heads[j]`` / ``mlp[j]`` belong to
    the student's layer ``j`` = the teacher's layer ``layers[j]``."""

    layers: list[int]
    hidden: torch.Tensor
    heads: list[torch.Tensor]
    kv_heads: list[torch.Tensor]
    mlp: list[torch.Tensor]

    def as_dict(self) -> dict:
        return {
            "layers": self.layers,
            "hidden": self.hidden.tolist(),
            "heads": [h.tolist() for h in self.heads],
            "kv_heads": [h.tolist() for h in self.kv_heads],
            "mlp": [m.tolist() for m in self.mlp],
        }


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, ascending (ties: the earlier index wins)."""
    order = torch.argsort(-scores.double(), stable=True)
    return order[:k].sort().values


def choose(imp: Importance, teacher: Shape, target: Shape) -> Kept:
    layers = top(imp.layers, target.num_layers).tolist()
    g, g_new = teacher.group_size, target.group_size
    heads, kv_heads = [], []
    for i in layers:
        per_group = imp.heads[i].view(teacher.num_key_value_heads, g)  # query head h uses KV head h // g
        best = per_group.sort(dim=1, descending=True, stable=True).values[:, :g_new].sum(1)
        groups = top(best, target.num_key_value_heads)
        kv_heads.append(groups)
        heads.append(torch.cat([top(per_group[j], g_new) + j * g for j in groups.tolist()]))
    return Kept(
        layers=layers,
        hidden=top(imp.hidden(layers), target.hidden_size),
        heads=heads,
        kv_heads=kv_heads,
        mlp=[top(imp.mlp[i], target.intermediate_size) for i in layers],
    )


def norm_scales(imp: Importance, kept: Kept) -> dict[int, float]:
    """Per norm row of ``imp.norms``: the weight scale that keeps the RMSNorm's output at its calibration-mean
    scale when its RMS is taken over the kept channels only (sqrt(mean ms kept / mean ms all))."""
    ms = imp.norm_input_ms.double()
    return {r: float((ms[r, kept.hidden].mean() / ms[r].mean().clamp_min(1e-30)).sqrt()) for r in range(ms.shape[0])}


def student_config(teacher_config, target: Shape, kept: Kept):
    """The teacher's config with the student's sizes (``head_dim`` written out, per-layer lists cut)."""
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = target.num_layers
    cfg.hidden_size = target.hidden_size
    cfg.intermediate_size = target.intermediate_size
    cfg.num_attention_heads = target.num_attention_heads
    cfg.num_key_value_heads = target.num_key_value_heads
    cfg.head_dim = target.head_dim
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [teacher_config.layer_types[i] for i in kept.layers]
    if hasattr(cfg, "max_window_layers"):
        cfg.max_window_layers = min(cfg.max_window_layers, target.num_layers)
    return cfg


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def slice_state_dict(sd: dict, teacher: Shape, kept: Kept, scales: dict[int, float] | None = None) -> dict:
    """The student's state dict from the teacher's: every tensor cut to the kept layers/channels/heads.

    ``scales`` (from :func:`norm_scales`) multiplies the RMSNorm weights. A key this module does not
    know is a ``ValueError``: better to stop than to write a half-pruned model.
    """
    hid, hd, last_norm = kept.hidden, teacher.head_dim, 2 * teacher.num_layers
    scales = scales or {}
    new_index = {old: new for new, old in enumerate(kept.layers)}
    out = {}
    for key, w in sd.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            if key == "model.embed_tokens.weight" or key == "lm_head.weight":
                out[key] = w[:, hid]
            elif key == "model.norm.weight":
                out[key] = w[hid] * scales.get(last_norm, 1.0)
            elif key == "lm_head.bias":
                out[key] = w.clone()
            else:
                raise ValueError(f"cannot prune weight {key!r}: not a Llama-style module")
            continue
        old = int(m.group(1))
        if old not in new_index:
            continue
        j, name = new_index[old], m.group(2)
        q, kv, mlp = _rows(kept.heads[j], hd), _rows(kept.kv_heads[j], hd), kept.mlp[j]
        if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            row = 2 * old + (name.startswith("post"))
            t = w[hid] * scales.get(row, 1.0)
        elif name == "self_attn.q_proj.weight":
            t = w[q][:, hid]
        elif name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
            t = w[kv][:, hid]
        elif name == "self_attn.q_proj.bias":
            t = w[q]
        elif name in ("self_attn.k_proj.bias", "self_attn.v_proj.bias"):
            t = w[kv]
        elif name == "self_attn.o_proj.weight":
            t = w[hid][:, q]
        elif name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            t = w[mlp][:, hid]
        elif name in ("mlp.gate_proj.bias", "mlp.up_proj.bias"):
            t = w[mlp]
        elif name == "mlp.down_proj.weight":
            t = w[hid][:, mlp]
        elif name in ("self_attn.o_proj.bias", "mlp.down_proj.bias"):
            t = w[hid]
        else:
            raise ValueError(f"cannot prune weight {key!r}: not a Llama-style module")
        out[f"model.layers.{j}.{name}"] = t.contiguous()
    return out
