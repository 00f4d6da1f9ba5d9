"""The ``tune:`` config section: how ``potstill tune`` searches the training settings on the validation split."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..section import Section


class Distribution(Section):
    """One searched key: a range (``low``, ``high``, optionally ``log`` or ``step``) or a list of ``choices``.

    A range is sampled as an integer when the key's config value is an integer (``train.batch_size``),
    else as a float (``train.kd.temperature: {low: 1, high: 4}`` gives any temperature in [1, 4]).
    """

    low: float | None = Field(None, description="Smallest value of a range.")
    high: float | None = Field(None, description="Largest value of a range.")
    log: bool = Field(False, description="Sample the range on a log scale (low > 0; e.g. a learning rate).")
    step: float | None = Field(None, gt=0, description="Sample the range on this grid (not with log).")
    choices: list[Any] | None = Field(None, min_length=1, description="Values to choose from (instead of a range).")

    @model_validator(mode="after")
    def _one_kind(self):
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together")
        return self

    def endpoints(self) -> list[Any]:
        """The values that must each make a valid config: both ends of a range, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class TuneConfig(Section):
    """Hyper-parameter search on the validation split (`potstill tune`: Optuna TPE, resumable)."""

    trials: int = Field(20, ge=1, description="Trials to finish (finished ones count on a rerun).")
    timeout_s: float | None = Field(
        None, gt=0, description="Start no new trial after this many seconds (a running trial finishes)."
    )
    method: Literal["kd", "sft"] = Field("kd", description="The training method whose settings are searched.")
    metric: Literal["pct_of_teacher", "score"] = Field(
        "pct_of_teacher",
        description="What is maximized: the student's validation score in % of the teacher's, or its mean score.",
    )
    seed: int | None = Field(None, description="Seed of the TPE sampler (default: the run's seed).")
    space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted train.* key -> distribution, e.g. 'train.lr: {low: 1e-4, high: 1e-2, log: true}' or "
        "'train.kd.divergence: {choices: [forward_kl, jsd]}' (empty: the default space of the method).",
    )
