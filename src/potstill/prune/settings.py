"""What a pruned student should look like (:class:`PruneSettings`), checked against the teacher (:class:`Shape`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError

WHERE = "student.prune"  # prefix of the key named in a UserError about these settings


class PruneSettings(BaseModel):
    """Prune the teacher into the student's starting weights (Minitron: prune, then recover with KD).

    Every target size is optional: unset keeps the teacher's. ``head_dim`` is never changed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int | None = Field(
        None, ge=1, le=100_000, description="Decoder layers kept; the least important (by `depth_metric`) are dropped."
    )
    hidden_size: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Embedding channels kept (the residual stream, in every layer, the embeddings and lm_head alike).",
    )
    intermediate_size: int | None = Field(None, ge=1, le=10_000_000, description="MLP channels kept in every layer.")
    num_attention_heads: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Query heads kept in every layer. "
        "With grouped-query attention, unset num_key_value_heads keeps the "
        "teacher's group size (whole KV groups are dropped with their query heads).",
    )
    num_key_value_heads: int | None = Field(
        None, ge=1, le=100_000, description="KV heads (groups) kept in every layer; must divide num_attention_heads."
    )
    depth_metric: Literal["cosine", "loss"] = Field(
        "cosine",
        description="Layer importance: cosine = 1 - mean "
        "cos(input, output) over tokens (ShortGPT/Minitron block "
        "importance, one pass); loss = increase of the calibration LM "
        "loss when the layer alone is skipped (one pass per layer).",
    )
    aggregation: Literal["l2_mean", "mean_abs"] = Field(
        "l2_mean",
        description="Width importance of a channel or "
        "head from its activations: l2_mean = L2 norm over each "
        "sequence's tokens, then the mean over sequences; mean_abs = "
        "mean |activation| over all tokens.",
    )
    rescale_norms: bool = Field(
        True,
        description="When hidden channels are dropped, scale each RMSNorm weight so "
        "that its output keeps the calibration-mean scale it had over all channels (the RMS is "
        "then taken over fewer, mostly the strongest, channels). Not part of Minitron; false "
        "is Minitron's plain slicing.",
    )
    calibration_samples: int = Field(
        128, ge=1, le=1_000_000, description="Calibration sequences used (a seeded sample when more are given)."
    )
    max_seq_len: int = Field(512, ge=2, le=1_048_576, description="Calibration sequences are cut to this many tokens.")
    batch_size: int = Field(8, ge=1, le=4096, description="Calibration sequences per forward pass.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the calibration sample.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="The teacher's dtype while "
        "measuring importance (bfloat16 halves the memory of a "
        "large teacher); the student is saved in the teacher's "
        "stored dtype.",
    )


SIZE_FIELDS = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class Shape:
    """The sizes pruning changes, read from (or written into) a model config."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> Shape:
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        )

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_attention_heads // self.num_key_value_heads

    def as_dict(self) -> dict:
        return asdict(self)


def target_shape(settings: PruneSettings, teacher: Shape) -> Shape:
    """The student's shape: the settings' targets, unset ones kept; UserError (one line) if impossible."""
    for name in SIZE_FIELDS:
        want, have = getattr(settings, name), getattr(teacher, name)
        if want is not None and want > have:
            raise UserError(f"{want} is more than the teacher's {have}; pruning only removes", f"{WHERE}.{name}")
    heads, kv = _heads(settings, teacher)
    hidden = settings.hidden_size or teacher.hidden_size
    if hidden % heads:  # transformers' LlamaConfig refuses it (head_dim is stored apart, but the check stays)
        raise UserError(
            f"{hidden} is not a multiple of the {heads} attention heads kept (transformers requires it; "
            f"head_dim stays {teacher.head_dim})",
            f"{WHERE}.hidden_size",
        )
    return Shape(
        num_layers=settings.num_layers or teacher.num_layers,
        hidden_size=hidden,
        intermediate_size=settings.intermediate_size or teacher.intermediate_size,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=teacher.head_dim,
    )


def _heads(settings: PruneSettings, teacher: Shape) -> tuple[int, int]:
    """(query heads, KV heads) kept. Each kept KV group keeps ``heads // kv`` of its query heads, so
    the group size may shrink but not grow."""
    heads, kv, g = settings.num_attention_heads, settings.num_key_value_heads, teacher.group_size
    if heads is None and kv is None:
        return teacher.num_attention_heads, teacher.num_key_value_heads
    if kv is None:  # keep the group size: MHA stays MHA, GQA drops whole groups
        if heads % g:
            raise UserError(
                f"{heads} query heads cannot be whole KV groups of the teacher's {g} query heads each "
                f"({teacher.num_attention_heads} heads / {teacher.num_key_value_heads} KV heads); set "
                "num_key_value_heads too, or a multiple of " + str(g),
                f"{WHERE}.num_attention_heads",
            )
        return heads, heads // g
    if heads is None:
        return kv * g, kv
    if heads % kv:
        raise UserError(f"{heads} query heads do not divide into {kv} KV heads", f"{WHERE}.num_attention_heads")
    if heads // kv > g:
        raise UserError(
            f"{heads} query heads on {kv} KV heads is {heads // kv} per group, more than the teacher's "
            f"{g} ({teacher.num_attention_heads} / {teacher.num_key_value_heads}); keep more KV heads",
            f"{WHERE}.num_key_value_heads",
        )
    return heads, kv
