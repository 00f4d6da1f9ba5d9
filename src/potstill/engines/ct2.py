"""CTranslate2 (``ct2``, ``ct2-int8``): a model directory converted once, then generated from in C++.

:func:`ct2_model_dir` converts a Hugging Face directory (or a ``.gguf`` file, through its converted
directory) with CTranslate2's own ``TransformersConverter``, at float32, into
``$POTSTILL_CACHE/ct2/<hash>/`` (the hash covers the model's files and CTranslate2's major
version): like the GGUF conversion, once per content, under a lock, atomically. The precision is
chosen when the model is loaded (``compute_type``: ``float32``, ``int8``; ``float16`` / ``bfloat16``
on a GPU), so ``ct2`` and ``ct2-int8`` share one conversion.

:class:`CT2Generator` gives the records of :class:`potstill.teachers.hf.LocalGenerator` (see
:mod:`potstill.teachers.base`): the same chat template and tokenizer, greedy or sampled decoding
(``sampling_topk=0``: the full distribution, at the temperature and top-p asked), and the top-k
log-probabilities of each step from the raw logits (``return_logits_vocab``), i.e. the untempered
distribution the transformers backend records. ``benchmarks/engines.py`` measures how often its
greedy answers equal transformers' token for token.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from ..errors import UserError
from ..gguf import cached_conversion
from ..io import atomic_dir, sha256_json
from ..models import check_model_dir, load_tokenizer, model_hash, param_count
from ..teachers.base import GenerationSettings, PromptGenerator, eos_set, make_record
from ..teachers.hf import topk_rows

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
MISSING = "engine ct2 needs CTranslate2: pip install ctranslate2 (CPU wheels on PyPI), or set the engine to hf"


def import_ct2():
    """The ``ctranslate2`` module, or the one-line :class:`UserError` saying how to install it."""
    try:
        import ctranslate2  # defers ctranslate2 (a compiled extension)
    except ImportError:
        raise UserError(MISSING) from None
    return ctranslate2


def compute_type(engine: str, dtype: str, device: str) -> str:
    """CTranslate2's ``compute_type`` for an engine name and the model's ``dtype`` on ``device``."""
    if engine == "ct2-int8":
        return "int8_float16" if device == "cuda" else "int8"
    if device == "cuda":
        return {"bfloat16": "bfloat16", "float16": "float16"}.get(dtype, "float32")
    return "float32"  # the CPU wheels compute in float32 or int8


def _converted(d: Path) -> bool:
    return (d / "model.bin").is_file() and (d / "config.json").is_file() and (d / "potstill.json").is_file()


def convert(model_dir: str | Path, out_dir: str | Path, quantization: str | None = None, extra=None) -> Path:
    """Convert the Hugging Face directory ``model_dir`` into a CTranslate2 directory ``out_dir``
    (atomically: a failure leaves nothing at ``out_dir``). ``quantization``: None keeps float32,
    ``"int8"`` stores int8 weights; ``extra(tmp_dir)`` adds files before the directory is moved in
    place. An architecture CTranslate2 has no converter for is a one-line :class:`UserError` naming it."""
    ct2 = import_ct2()
    from ctranslate2.converters import TransformersConverter  # defers the converters (they import transformers)

    model_dir = check_model_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    arch = config.get("model_type", "?")
    with atomic_dir(out_dir) as tmp, contextlib.redirect_stdout(io.StringIO()), head_dim_kept(config):
        try:
            TransformersConverter(str(model_dir), load_as_float16=False).convert(
                str(tmp), quantization=quantization, force=True
            )
        except (ValueError, NotImplementedError, KeyError) as e:
            raise UserError(
                f"CTranslate2 {ct2.__version__} cannot convert a {arch!r} model ({_first_line(e)[:160]}); "
                "use engine hf, or export --format gguf",
                str(model_dir),
            ) from None
        (tmp / "potstill.json").write_text(
            json.dumps({"source": str(model_dir), "architecture": arch, "quantization": quantization})
        )
        if extra is not None:
            extra(tmp)
    return Path(out_dir)


@contextlib.contextmanager
def head_dim_kept(config: dict):
    """CTranslate2's Llama and Mistral converters build the model spec without ``head_dim``, so the
    runtime takes ``hidden_size / num_attention_heads``: wrong for a model whose heads are not that
    wide (a pruned student keeps its teacher's head width). While converting such a model, the spec is
    built with the config's ``head_dim`` (the argument CTranslate2's own Gemma and Qwen3 loaders pass)."""
    head_dim, heads, hidden = (config.get(k) for k in ("head_dim", "num_attention_heads", "hidden_size"))
    if not (head_dim and heads and hidden) or head_dim * heads == hidden:
        yield
        return
    from ctranslate2.specs import transformer_spec  # defers ctranslate2 (a compiled extension)

    cls = transformer_spec.TransformerDecoderModelSpec
    original = cls.__dict__["from_config"]

    def from_config(*args, **kwargs):
        kwargs.setdefault("head_dim", head_dim)
        return original.__func__(cls, *args[1:] if args and args[0] is cls else args, **kwargs)

    cls.from_config = staticmethod(from_config)
    try:
        yield
    finally:
        cls.from_config = original


def ct2_model_dir(path: str | Path) -> Path:
    """The cached CTranslate2 conversion of the model at ``path``: ``cache_root()/ct2/<hash>/``."""
    ct2 = import_ct2()
    model_dir = check_model_dir(path)
    key = sha256_json({"model": model_hash(model_dir), "ctranslate2": ct2.__version__.split(".")[0], "head_dim": 1})
    return cached_conversion(
        "ct2",
        key,
        _converted,
        lambda out: convert(model_dir, out),
        f"ct2: converting {model_dir} for CTranslate2 (once per model content)",
    )


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


class CT2Generator(PromptGenerator):
    """Generates answers with CTranslate2 from a model directory or ``.gguf`` file.

    ``engine`` is ``ct2`` (the model's dtype) or ``ct2-int8`` (int8 weights); ``device`` ``cpu`` or
    ``cuda`` (default: CUDA when torch sees a GPU); ``threads``: OpenMP threads (default: torch's);
    ``seed``: the random stream of sampled answers (see :meth:`reseed`).
    """

    def __init__(
        self,
        path: str | Path,
        engine: str = "ct2",
        dtype: str = "float32",
        device: str | None = None,
        threads: int | None = None,
        tokenizer=None,
        seed: int = 0,
    ):
        import_ct2()
        self.path = check_model_dir(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.engine, self.compute_type = engine, compute_type(engine, dtype, self.device)
        self.tokenizer = tokenizer or load_tokenizer(self.path, padding_side="left")
        self.ct2_dir = ct2_model_dir(self.path)
        self.threads, self.seed, self.reseeded = threads or torch.get_num_threads(), int(seed), False
        self._load()
        config = json.loads((self.path / "config.json").read_text())
        self.params = param_count(self.path)
        self.context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
        self.eos_ids = self._eos_ids(config)
        self.vocab = len(self.tokenizer)
        vocabulary = json.loads((self.ct2_dir / "vocabulary.json").read_text())
        self.padding = [[t] for t in vocabulary[self.vocab :]]  # embedding rows past the tokenizer: never emitted

    def _eos_ids(self, config: dict) -> set[int]:
        gen_cfg = self.path / "generation_config.json"
        eos = json.loads(gen_cfg.read_text()).get("eos_token_id") if gen_cfg.is_file() else None
        return eos_set(config.get("eos_token_id") if eos is None else eos, self.tokenizer)

    def _load(self) -> None:
        """(Re)load the model. CTranslate2 seeds a thread's random stream once, when that thread first
        samples, from the seed set last: a new seed needs a fresh model, seeded just before it samples."""
        self.model = import_ct2().Generator(
            str(self.ct2_dir), device=self.device, compute_type=self.compute_type, intra_threads=self.threads
        )
        self.sampled = False

    def reseed(self, seed: int) -> None:
        """Sample from ``seed`` next (a model that has sampled already is reloaded before it samples
        again; greedy decoding never reloads)."""
        self.seed, self.reseeded = int(seed), True

    def _seed_for_sampling(self) -> None:
        if self.sampled and self.reseeded:
            self._load()
        if not self.sampled:
            import_ct2().set_random_seed(self.seed)
        self.sampled, self.reseeded = True, False

    def tokens(self, ids: list[int]) -> list[str]:
        """Token ids as the token strings CTranslate2 takes (its vocabulary is the tokenizer's)."""
        return self.tokenizer.convert_ids_to_tokens(list(ids))

    def options(self, settings: GenerationSettings, logits: bool = False) -> dict:
        """``generate_batch`` keywords for ``settings`` (``logits``: return each step's raw logits)."""
        opts = dict(
            max_length=settings.max_new_tokens,
            include_prompt_in_result=False,
            end_token=sorted(self.eos_ids),
            return_end_token=True,
            return_logits_vocab=logits,
        )
        if self.padding:
            opts["suppress_sequences"] = self.padding
        if settings.do_sample:
            opts.update(sampling_topk=0, sampling_topp=settings.top_p, sampling_temperature=settings.temperature)
        return opts

    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings) -> list[dict]:
        """Generate for one batch of tokenized prompts; returns partial records (no id)."""
        k = settings.top_logprobs
        if settings.do_sample:
            self._seed_for_sampling()
        results = self.model.generate_batch([self.tokens(p) for p in prompts], **self.options(settings, k > 0))
        shortest = min(len(p) for p in prompts)
        records = []
        for p, res in zip(prompts, results):
            ids = list(res.sequences_ids[0])
            top = None
            if k > 0:
                top = topk_rows(step_logits(res, len(p) - shortest, len(ids), self.vocab)[None], k)[0] if ids else []
            records.append(make_record(self.tokenizer, len(p), ids, self.eos_ids, top))
        return records


def step_logits(result, forced: int, steps: int, vocab: int) -> torch.Tensor:
    """``[steps, vocab]``: the raw logits of one CTranslate2 result's generated tokens (real tokens only).

    CTranslate2 forwards the batch's shortest prompt length at once and feeds the rest of a longer
    prompt through its decoding loop, whose steps it returns too: the first ``forced`` (the prompt's
    length past the shortest) are the prompt's, not the answer's."""
    import numpy as np  # defers numpy

    rows = result.logits[0]
    if len(rows) != forced + steps:
        raise RuntimeError(f"CTranslate2 returned {len(rows)} logit rows for {forced} prompt + {steps} answer steps")
    return torch.from_numpy(np.stack([np.asarray(x) for x in rows[forced:]]))[:, :vocab]
