"""The pipeline's YAML config, validated with pydantic.

One file describes a run: prompt sources, teacher, student, training methods, evaluation and
prices. Unknown or misspelled keys are errors that name the key and suggest the closest valid
one; ``key.sub=value`` overrides from the command line are applied before validation.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .data.config import EXPANDED_VALIDATION, PromptsConfig, config_key_error
from .errors import UserError
from .expand.config import ExpandConfig
from .prune.settings import PruneSettings
from .section import Section
from .teachers.spec import teacher_spec
from .tune.config import TuneConfig


class VLLMSettings(Section):
    """vLLM engine settings for a ``vllm:DIR`` teacher (generation and signal capture; set teacher.dtype: bfloat16)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model instance is split over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of each GPU's memory vLLM may take.")
    max_model_len: int | None = Field(None, ge=1, description="Context length (default: the model's).")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower decode).")


class TeacherConfig(Section):
    """Who answers the training prompts: a local model, or an API (with the engine settings below)."""

    model: str = Field(
        description="Local Hugging Face model directory (AutoModelForCausalLM), 'vllm:DIR' (the same "
        "model run by vLLM: pip install potstill[vllm], GPU), or an API teacher: "
        "'openai:MODEL' (any OpenAI-compatible endpoint) or 'anthropic:MODEL' (Messages API)."
    )
    batch_size: int = Field(16, ge=1, description="Prompts generated together (left padding, KV cache).")
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Most tokens generated per answer.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with do_sample).")
    top_logprobs: int = Field(0, ge=0, le=100, description="Per-token top-k log-probabilities to record (0: none).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    engine: Literal["hf", "ct2", "ct2-int8", "vllm"] = Field(
        "ct2",
        description="How a local teacher generates (potstill.engines): ct2 (CTranslate2 at the model's dtype, "
        "converted once; the fastest exact engine on a CPU), ct2-int8 (int8 weights: faster, answers may "
        "differ), hf (transformers generate) or vllm (GPU; the same as writing 'vllm:DIR').",
    )
    # API teachers only (openai:/anthropic:)
    base_url: str | None = Field(
        None,
        description="API endpoint (default https://api.openai.com/v1 or https://api.anthropic.com); "
        "e.g. http://127.0.0.1:8000/v1 for vLLM, llama.cpp, Ollama, LiteLLM or `potstill serve`.",
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the "
        "API key (default OPENAI_API_KEY / ANTHROPIC_API_KEY; may be unset for a local server).",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="API requests in flight at once.")
    rpm: float | None = Field(None, gt=0, description="Most API requests per minute (token bucket; none: unlimited).")
    tpm: float | None = Field(
        None, gt=0, description="Most API tokens (prompt + max_new_tokens, settled to real usage) per minute."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout in seconds.")
    max_attempts: int = Field(
        6,
        ge=1,
        le=100,
        description="Attempts per prompt (429/5xx/timeouts/dropped connections are "
        "retried) before it goes to failed.jsonl with its last error.",
    )
    backoff_base_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="First retry delay; doubles each retry, with jitter; at least the server's Retry-After.",
    )
    backoff_max_s: float = Field(60.0, gt=0, le=3600, description="Longest backoff delay between retries.")
    max_cost: float | None = Field(
        None,
        ge=0,
        description="Stop cleanly when this run's API spend (USD, at prices.teacher token prices) would exceed this.",
    )
    max_failed_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="API teachers: largest share of the prompts that "
        "may end in failed.jsonl (after max_attempts) for the run to go on; above it the "
        "generate stage stops and keeps no output (answers stay cached, the failures are "
        "listed in its work folder): rerun to retry them.",
    )
    tokenizer: str | None = Field(
        None,
        description="Local tokenizer directory matching the API model: top log-probs are "
        "stored as token ids (for KD); without it as token strings (top_logprobs_text).",
    )
    cache: str | None = Field(
        None,
        description="SQLite answer cache of API teachers (default <run_dir>/.cache/teacher-api.sqlite); "
        "share one file between runs to never pay twice for an answer.",
    )
    vllm: VLLMSettings = Field(
        default_factory=lambda: VLLMSettings(), description="Engine settings of a 'vllm:DIR' teacher."
    )

    @model_validator(mode="before")
    @classmethod
    def _vllm_engine(cls, data):
        """``engine: vllm`` and ``model: vllm:DIR`` say the same thing: make both say it."""
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            if str(data["model"]).startswith("vllm:"):
                data = {**data, "engine": "vllm"}
            elif data.get("engine") == "vllm" and ":" not in data["model"]:
                data = {**data, "model": f"vllm:{data['model']}"}
        return data

    @model_validator(mode="after")
    def _spec(self):
        """The model spec parses (:mod:`potstill.teachers.spec`: an API model names a model; base_url is for APIs)."""
        try:
            teacher_spec(self, Path)
        except UserError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None
        return self

    @field_validator("backoff_max_s")
    @classmethod
    def _backoff(cls, v: float, info: ValidationInfo) -> float:
        if v < info.data.get("backoff_base_s", 0):
            raise ValueError("must be >= backoff_base_s")
        return v


class StudentConfig(Section):
    """The small model that learns from the teacher."""

    model: str | None = Field(
        None,
        description="Model directory (or .gguf file): weights + tokenizer, or config.json + "
        "tokenizer with init=random. Not used with init=prune.",
    )
    init: Literal["pretrained", "random", "prune"] = Field(
        "pretrained",
        description="Start from the weights, from a "
        "random init of config.json, or from the teacher pruned to "
        "`prune`'s sizes (Minitron: prune, then recover with KD).",
    )
    prune: PruneSettings = Field(
        default_factory=PruneSettings,
        description="Pruning the teacher into the student (init=prune): target sizes and calibration (potstill.prune).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Training/eval dtype.")

    @model_validator(mode="after")
    def _model_or_prune(self):
        if self.init != "prune" and not self.model:
            raise ValueError("student.model is required unless student.init is 'prune'")
        return self


class LoraSettings(Section):
    """Parameter-efficient training with PEFT; adapters are merged on export."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Modules to adapt.")
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="QLoRA: load the frozen base student quantized "
        "with bitsandbytes (NF4 for 4bit; CUDA only; pip install potstill[qlora]).",
    )


class KDSettings(Section):
    """Soft-label distillation: loss = alpha * T^2 * D(teacher_T, student_T) + (1 - alpha) * CE, per response token.

    A mean over the response tokens of each optimizer step (potstill.losses); D is `divergence`.
    Frozen: the trainer passes this object as it is down to the loss.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    temperature: float = Field(1.0, gt=0, description="Softmax temperature T applied to both models.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (KD) term; 1 - alpha goes to cross-entropy.")
    signal: Literal["live", "topk", "store"] = Field(
        "live",
        description="live: run the teacher during training; topk: use the generate stage's top-k log-probs; store: a "
        "signal store written by `potstill capture` (no teacher in memory while training).",
    )
    store: str | None = Field(
        None,
        description="Signal store directory for signal=store (default <run_dir>/signals, where `potstill capture` "
        "writes).",
    )
    store_format: Literal["dense", "topk", "sampled"] = Field(
        "sampled",
        description="What `potstill capture` stores per response token: dense (2V bytes: small vocabularies), topk "
        "(ids, log-probs, tail mass) or sampled (store_draws draws as distinct ids + counts: unbiased, 3 bytes per "
        "distinct id at V=128k).",
    )
    store_k: int = Field(12, ge=1, description="Ids per token of a topk store.")
    store_draws: int = Field(
        64,
        ge=1,
        le=255,
        description="Draws per token of a sampled store (systematic sampling at T; 64 keeps a Llama-3-sized "
        "vocabulary at ~25-35 bytes per token).",
    )

    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"] = Field(
        "forward_kl",
        description="D, with p the teacher and q the student: forward_kl KL(p||q); reverse_kl KL(q||p); jsd the "
        "generalized JSD with beta (GKD/TRL convention); skew_forward_kl KL(p || a p + (1-a) q) and skew_reverse_kl "
        "KL(q || a q + (1-a) p) with a = skew_alpha (DistiLLM); tvd total variation. Needs signal 'live' unless "
        "forward_kl.",
    )
    beta: float = Field(
        0.5, ge=0, le=1, description="jsd only: mixture m = beta p + (1 - beta) q; beta 0 is forward KL, 1 reverse KL."
    )
    skew_alpha: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Skew KLs only: weight a of the skewed distribution in the mixture; 0 is the plain KL.",
    )
    chunk_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Tokens per chunk of the loss computed from final hidden states "
        "(scratch memory ~ 5 * chunk_size * vocab floats, flat in sequence length).",
    )
    cross_tokenizer: Literal["sft", "uld"] = Field(
        "sft",
        description="When teacher and student tokenizers differ (see "
        "`potstill check`): sft trains the kd student on the teacher's text "
        "(cross-entropy only); uld adds Universal Logit Distillation (sorted-"
        "probability L1, Boizard et al. 2024; signal 'live').",
    )
    on_policy_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="GKD (Agarwal et al. 2024): share lambda of training "
        "sequences whose response the student samples itself, scored by the live teacher "
        "(divergence only); 0 is plain off-policy KD.",
    )
    on_policy_temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of the student's on-policy responses."
    )
    on_policy_max_new_tokens: int = Field(64, ge=1, description="Most tokens of an on-policy response.")

    @model_validator(mode="after")
    def _divergence_needs_live_teacher(self):
        if self.signal != "live" and (self.on_policy_ratio > 0 or self.cross_tokenizer == "uld"):
            what = "on_policy_ratio > 0" if self.on_policy_ratio > 0 else "cross_tokenizer 'uld'"
            raise ValueError(f"{what} needs the live teacher (signal 'live'), not signal '{self.signal}'")
        if self.signal != "live" and self.divergence != "forward_kl":
            raise ValueError(
                f"divergence '{self.divergence}' needs the teacher's full distribution (signal 'live'); "
                f"signal '{self.signal}' supports forward_kl only"
            )
        return self


class TrainConfig(Section):
    """How each student is trained (hyper-parameters shared by all methods)."""

    methods: list[Literal["sft", "kd"]] = Field(
        ["sft", "kd"], min_length=1, description="Methods to train, one student each."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training pairs.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, description="Sequences per device step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_seq_len: int = Field(
        256, ge=8, description="Prompt + response tokens kept (longer ones are truncated from the left of the prompt)."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the LR.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N optimizer steps (resume point).")
    logging_steps: int = Field(20, ge=1, description="Log every N steps.")
    report_to: list[str] = Field(["none"], description="Trainer integrations (tensorboard, wandb, ...).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPUs with bf16 support, or CPUs).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    kd: KDSettings = Field(default_factory=KDSettings)


class ScorerSpec(Section):
    """A quality scorer: returns a score in [0, 1] for one answer."""

    type: Literal["exact", "normalized", "regex", "python", "rouge_l", "chrf", "agreement"] = Field(
        description="Scorer kind (chrf: sacrebleu chrF / 100; agreement: normalized match with the teacher's answer)."
    )
    name: str | None = Field(None, description="Name in the report (default: the type).")
    field: str = Field("answer", description="Record key holding the reference answer (meta is searched too).")
    pattern: str | None = Field(None, description="Regex that a correct answer matches (type=regex; may use {field}).")
    function: str | None = Field(
        None, description="'module:function' called as f(answer, record, reference) -> float (type=python)."
    )

    @model_validator(mode="after")
    def _needs(self):
        if self.type == "regex" and not self.pattern:
            raise ValueError("scorer type 'regex' needs 'pattern'")
        if self.type == "python" and not self.function:
            raise ValueError("scorer type 'python' needs 'function' as 'module:function'")
        return self


class LatencySettings(Section):
    """Measured speed and memory of each model on this machine."""

    queries: int = Field(16, ge=1, description="Test queries timed one at a time (batch 1).")
    batch_size: int = Field(16, ge=1, description="Batch size of the batched-load measurement.")
    engines: list[Literal["hf", "ct2", "ct2-int8"]] | None = Field(
        None,
        description="Engines every model is measured on (default: eval.engine alone); the report gives "
        "latency, throughput and cost on each, and its cost ratio on eval.engine, the engine the answers "
        "were scored on.",
    )


class JudgeSettings(Section):
    """Pairwise LLM judge: student vs teacher answers, both orders, ties allowed (potstill.evaluate.judge)."""

    model: str | None = Field(
        None,
        description="Judge model: a local model directory or 'openai:MODEL' / 'anthropic:MODEL' "
        "(default: the run's teacher, with its provider settings).",
    )
    base_url: str | None = Field(
        None,
        description="API endpoint of an API judge other than the teacher (default: the "
        "teacher's base_url when the teacher is the same provider, else the provider's default).",
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable with "
        "the API judge's key (default: the teacher's, or OPENAI_API_KEY / ANTHROPIC_API_KEY).",
    )
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Most tokens of each judge reply (rationale + verdict).")
    batch_size: int = Field(32, ge=1, description="Judge prompts generated together (local judge).")
    max_examples: int | None = Field(
        100,
        ge=1,
        description="Judge N prompts of each split, evenly spaced through it (each "
        "costs two judge calls per judged model; null: all). The preference's CI is reported.",
    )
    include_floor: bool = Field(
        True,
        description="Also judge the untrained floor against the teacher (a sanity check: "
        "a judge that does not prefer the teacher over the floor is not judging).",
    )
    fallback: Literal["similarity", "none"] = Field(
        "similarity",
        description="Reply with no stated verdict: 'similarity' "
        "picks the answer the reply shares more words with (tie within 0.05 F1); "
        "'none' leaves it unparsed. Rates of each kind are reported.",
    )


class EvalConfig(Section):
    """Teacher vs students on held-out splits."""

    splits: list[str] = Field(
        ["test", "ood"],
        description="Splits to evaluate: validation, test, ood, the name of a `prompts.eval_sets` entry, or "
        "validation_expanded (with expand.validation).",
    )
    scorer: ScorerSpec = Field(
        default_factory=lambda: ScorerSpec(type="rouge_l"), description="The task's own scorer (primary)."
    )
    scorers: list[ScorerSpec] = Field(
        default_factory=list,
        description="More scorers, reported beside the primary one "
        "(mean and 95% CI per model and split); ROUGE-L, chrF and agreement with the "
        "teacher's answer are always reported.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Most tokens per answer.")
    batch_size: int = Field(32, ge=1, description="Prompts answered together.")
    engine: Literal["hf", "ct2", "ct2-int8"] = Field(
        "ct2",
        description="How local models answer (potstill.engines): ct2 (CTranslate2, the model's dtype), ct2-int8 "
        "(int8 weights: score what an int8 deployment answers) or hf (transformers). The untrained floor runs on hf.",
    )
    include_floor: bool = Field(True, description="Also evaluate the untrained student (the floor of 'gap recovered').")
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most N prompts per split.")
    judge: bool | Literal["auto"] | JudgeSettings = Field(
        "auto",
        description="Pairwise LLM judge of every student (and the floor) against the teacher: auto (on when the "
        "judge - the run's teacher - is an API model or a local model at least 10x the students' parameters; else off, "
        "saying why), true, false, or judge settings (which turn it on).",
    )
    teacher_forced: bool = Field(
        True,
        description="Top-1 token agreement and mean KL(teacher ‖ student) on the teacher's "
        "held-out answers (needs a local teacher and a shared tokenizer; others are skipped).",
    )
    bootstrap_samples: int = Field(
        10_000,
        ge=100,
        le=1_000_000,
        description="Paired bootstrap resamples for the 95% "
        "confidence intervals (percentile method, seeded by the run's seed).",
    )
    contamination_threshold: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of an evaluation split that may "
        "be exact or near (>= 80% of word 8-grams) copies of training prompts; above "
        "it the eval stage refuses to run (validation, a random share of the training sources, is only warned about).",
    )
    force_contaminated: bool = Field(
        False, description="Evaluate even above contamination_threshold (the report warns)."
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v):
        """One clear error for a bad judge setting (not one per member of ``bool | JudgeSettings``)."""
        if v is None:  # `judge:` left empty
            return False
        if isinstance(v, str):
            word = v.strip().lower()
            if word == "auto":
                return "auto"
            if word in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return word in ("true", "yes", "on", "1")
        if isinstance(v, dict):
            try:
                return JudgeSettings.model_validate(v)
            except ValidationError as err:
                e = err.errors()[0]
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(
                        str(e["loc"][-1]), list(JudgeSettings.model_fields), n=1, cutoff=0.5
                    )
                    hint = (
                        f" (did you mean '{close[0]}'?)"
                        if close
                        else f" (valid keys: {', '.join(JudgeSettings.model_fields)})"
                    )
                    raise ValueError(f"unknown key '{key}'{hint}") from None
                raise ValueError(f"'{key}': {e['msg']}") from None
        if not isinstance(v, (bool, JudgeSettings)):
            raise ValueError("must be auto, true, false or a mapping of judge settings")
        return v

    def judge_settings(self) -> JudgeSettings | None:
        """The judge's settings (``auto`` too: the eval stage decides), or None when the judge is off."""
        if self.judge is True or self.judge == "auto":
            return JudgeSettings()
        return self.judge or None


class Price(Section):
    """Either hardware rent, or API token prices."""

    usd_per_hour: float | None = Field(None, ge=0, description="Hardware cost while serving.")
    usd_per_1m_input_tokens: float | None = Field(None, ge=0, description="API price per million prompt tokens.")
    usd_per_1m_output_tokens: float | None = Field(None, ge=0, description="API price per million completion tokens.")


class PricesConfig(Section):
    """Prices used for cost per query."""

    teacher: Price = Field(default_factory=lambda: Price(usd_per_hour=4.0))
    student: Price = Field(default_factory=lambda: Price(usd_per_hour=0.5))
    queries_per_day: int = Field(50_000, ge=1, description="Traffic for the per-year figures.")


class Acceptance(Section):
    """An explicit, recorded acceptance of a teacher's terms that would otherwise stop the run."""

    who: str = Field(min_length=1, description="Who accepts (a person or role), e.g. 'Jane Doe, legal'.")
    why: str = Field(
        min_length=1,
        description="Why the use is acceptable, e.g. 'the student is a Llama 3 derivative' "
        "or 'internal classifier, does not compete'.",
    )
    date: datetime.date = Field(description="When it was accepted (YYYY-MM-DD).")

    @field_validator("who", "why")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class TermsConfig(Section):
    """The teacher's terms of use: what its outputs are used for (checked against potstill's terms registry)."""

    use: Literal["train_model", "research", "evaluation"] = Field(
        "train_model",
        description="What the teacher's outputs are used for: train_model (a student that is used or "
        "distributed), research (a student for non-commercial research), evaluation (outputs only compared, no "
        "training).",
    )
    commercial: bool = Field(True, description="The use is commercial (false: non-commercial research).")
    acceptance: Acceptance | None = Field(
        None,
        description="Recorded acceptance (who, why, date) that lets a run "
        "proceed although the teacher's terms forbid the configured use.",
    )


class RouteConfig(Section):
    """Student → teacher routing: calibrated on the user's own data (see potstill.route)."""

    enabled: bool = Field(True, description="Run the route stage (calibrate the cascade; the report shows its curve).")
    student: str | None = Field(
        None, description="The trained method whose student is routed (default: kd if trained, else the first)."
    )
    signal: Literal[
        "mean_logprob", "min_logprob", "p10", "p25", "p50", "neg_mean_entropy", "neg_max_entropy", "logistic"
    ] = Field(
        "p10",
        description="Confidence signal from the student's generation; logistic: a "
        "logistic regression on all signals fitted on the calibration split.",
    )
    target_quality: float | None = Field(
        98.0,
        gt=0,
        le=200,
        description="Blended quality to reach, in % of the "
        "teacher-only quality on the calibration split (fewest teacher calls that reach it).",
    )
    max_teacher_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Most queries sent to the teacher (share; "
        "with target_quality too: the fewest calls meeting it within this cap).",
    )
    split: str = Field(
        "validation",
        description="Calibration split: validation, test, ood, validation_expanded (with expand.validation) "
        "or a prompts.eval_sets name.",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Most tokens per student answer (default: eval.max_new_tokens)."
    )
    batch_size: int = Field(32, ge=1, description="Prompts answered together.")

    @model_validator(mode="after")
    def _target(self):
        if self.target_quality is None and self.max_teacher_share is None:
            raise ValueError("route needs target_quality or max_teacher_share")
        return self


class ReportConfig(Section):
    """What the report stage writes besides the report itself."""

    export: list[Literal["gguf", "ct2"]] = Field(
        [],
        description="Also write the report's headline student into RUN/report/export/ as a GGUF file (llama.cpp, "
        "Ollama) and/or a CTranslate2 directory, with its model card and provenance (potstill export).",
    )
    gguf_type: Literal["f32", "f16", "q8_0", "q4_0"] = Field("f16", description="Weight type of the GGUF export.")
    ct2_type: Literal["float32", "int8"] = Field("float32", description="Weight type of the CTranslate2 export.")


class RunConfig(Section):
    """A whole potstill run."""

    name: str = Field("run", description="Run name, shown in the report.")
    run_dir: str = Field(
        "runs/run", description="Where every stage writes its artifacts (relative to the config file)."
    )
    seed: int = Field(0, description="Seed for training and sampling.")
    prompts: PromptsConfig
    expand: ExpandConfig = Field(default_factory=ExpandConfig)
    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    terms: TermsConfig = Field(default_factory=TermsConfig)
    route: RouteConfig = Field(default_factory=RouteConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    base_dir: Path = Field(Path("."), exclude=True, description="Directory relative paths resolve against.")

    def resolve(self, path: str | Path) -> Path:
        """A config path made absolute against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def run_path(self) -> Path:
        return self.resolve(self.run_dir)

    @model_validator(mode="after")
    def _eval_splits(self):
        for key, names in (("eval.splits", self.eval.splits), ("route.split", [self.route.split])):
            for name in names:
                self._check_split(key, name)
        return self

    def _check_split(self, key: str, name: str) -> None:
        """A split named in ``key`` is one this config produces; else one config error naming the key."""
        known = (*self.prompts.held_out(), EXPANDED_VALIDATION)
        if name == EXPANDED_VALIDATION and not self.expand.validation:
            raise config_key_error(
                key, f"split '{EXPANDED_VALIDATION}' is made by the expand stage: set expand.validation: true"
            )
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            declared = ", ".join(self.prompts.eval_sets)
            sets = f"a prompts.eval_sets name ({declared})" if declared else "a name declared in prompts.eval_sets"
            raise config_key_error(key, f"unknown split {name!r} (expected validation, test, ood or {sets}{hint})")


# ----------------------------------------------------------------------------------------------
# Loading, overrides and readable errors


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key.sub=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"override '{item}' has an empty key")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(value)
    return data


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the location ``loc`` (without its last element)."""
    model: Any = RunConfig
    keyed = False  # the part after a dict field is one of its keys (prompts.eval_sets.NAME)
    for part in loc[:-1]:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        keyed = _is_dict(ann)
        for cand in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(cand, "__args__", ())
            for c in (cand, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
            else:
                continue
            break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_depth(loc: tuple) -> int:
    """How many leading parts of ``loc`` name real config keys (or list indices); the rest are
    pydantic's tags for the members of a union (``list[str]``, ``str``) or an unknown key."""
    model: Any = RunConfig
    keyed = False  # the part after a dict field is one of its keys (prompts.eval_sets.NAME)
    for depth, part in enumerate(loc):
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            return depth
        ann = fields[part].annotation
        model, keyed = _nested_model(ann) or _list_item_model(ann), _is_dict(ann)
    return len(loc)


def _is_dict(ann) -> bool:
    return getattr(ann, "__origin__", None) is dict


def _list_item_model(ann) -> type[BaseModel] | None:
    for cand in getattr(ann, "__args__", ()):
        inner = _nested_model(cand)
        if inner is not None:
            return inner
    return None


def _format_one(e: dict, source: str) -> str:
    ctx = e.get("ctx") or {}
    if e["type"] == "config_key":  # potstill.data.config.config_key_error: names its own key
        return f"{source}: config key '{ctx['key']}': {ctx['message']}"
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        owner = _model_at(loc)
        valid = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid keys: {', '.join(valid)})" if valid else "")
        return f"{source}: unknown config key '{key}'{hint}"
    if e["type"] == "missing":
        return f"{source}: missing required config key '{key}'"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{source}: config key '{key}': {msg} (got {e.get('input')!r})"


def format_validation_errors(err: ValidationError, source: str) -> list[str]:
    """One line per bad key (every one, in the order pydantic found them), with a suggestion for
    unknown keys. A value that fits no member of a union (``list[str] | str``) is one line naming
    what was expected, not one line per member."""
    lines: list[str] = []
    unions: dict[str, int] = {}  # key -> index in lines of a value that fits no member of a union
    for e in err.errors():
        loc = tuple(e["loc"])
        depth = _field_depth(loc)
        if e["type"] == "extra_forbidden" or depth == len(loc):
            lines.append(_format_one(e, source))
            continue
        key = ".".join(str(p) for p in loc[:depth])
        tag = ".".join(str(p) for p in loc[depth:])
        if key in unions:
            lines[unions[key]] = lines[unions[key]].replace(" (got ", f" or {tag} (got ", 1)
            continue
        unions[key] = len(lines)
        lines.append(f"{source}: config key '{key}': expected {tag} (got {e.get('input')!r})")
    return lines


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad key, with a suggestion for unknown keys."""
    return format_validation_errors(err, source)[0]


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; errors are one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"malformed YAML ({getattr(e, 'problem', e)})", where) from None
    if not isinstance(data, dict):
        raise UserError("the config must be a YAML mapping", str(path))
    return config_from_dict(data, base_dir=path.resolve().parent, overrides=overrides, source=str(path))


def config_from_dict(
    data: dict, base_dir: Path, overrides: list[str] | None = None, source: str = "config"
) -> RunConfig:
    data = apply_overrides(dict(data), overrides or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError("\n".join(format_validation_errors(err, source))) from None
    cfg.base_dir = Path(base_dir)
    if cfg.tune.space:
        check_tune_space(data, cfg, source)
    return cfg


def value_at(data: dict, key: str) -> Any:
    """The value at a dotted key of a nested dict (None when absent)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_tune_space(data: dict, cfg: RunConfig, source: str) -> None:
    """Every key of ``tune.space`` is a ``train.*`` setting, and both ends of each range (every choice) make a
    valid config; a range is on a number. One line per bad key."""
    lines = []
    resolved = cfg.model_dump(mode="json")
    for key, dist in cfg.tune.space.items():
        where = f"{source}: tune.space '{key}'"
        if not key.startswith("train.") or key == "train.methods":
            lines.append(
                f"{where}: only train.* settings can be searched (the teacher's stages are shared by every "
                "trial; the method is tune.method)"
            )
            continue
        for value in dist.endpoints():
            try:
                RunConfig.model_validate(apply_overrides(copy.deepcopy(data), [f"{key}={json.dumps(value)}"]))
            except ValidationError as err:
                lines.append(format_validation_errors(err, f"{source}: tune.space")[0])
                break
        else:
            current = value_at(resolved, key)
            if dist.choices is None and (isinstance(current, bool) or not isinstance(current, (int, float))):
                lines.append(f"{where}: a range (low, high) needs a numeric setting; give choices: [...] instead")
    if lines:
        raise UserError("\n".join(lines))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the run directory keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def reference_rows(
    model: type[BaseModel] | None = None, prefix: str = "", seen: dict | None = None
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every config key, for the README's reference.

    A section type that appears twice (e.g. ``prompts.test[]`` after ``prompts.sources[]``) is
    listed once; later occurrences point to the first.
    """
    model = model or RunConfig
    seen = {} if seen is None else seen
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        nested = _nested_model(field.annotation)
        if nested is None:
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            rows.append((key, default, field.description or ""))
            continue
        sub = f"{key}[]" if _is_list(field.annotation) else f"{key}.KEY" if _is_dict(field.annotation) else key
        desc = (field.description or nested.__doc__ or "").strip().splitlines()[0]
        if nested in seen:
            rows.append((key, "", f"{desc} Same keys as `{seen[nested]}`."))
            continue
        seen[nested] = sub
        rows.append((key, "", desc))
        rows.extend(reference_rows(nested, f"{sub}.", seen))
    return rows


def _is_list(ann) -> bool:
    return getattr(ann, "__origin__", None) is list


def _nested_model(ann):
    for cand in (ann, *getattr(ann, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in reference_rows():
        lines.append(f"| `{key}` | {('`' + default + '`') if default else ''} | {desc} |")
    return "\n".join(lines)
