"""Loading local Hugging Face models and tokenizers, with one-line errors for bad paths.

Wherever a model directory is taken, a ``.gguf`` file is too: :func:`model_path` turns it into its
converted, cached Hugging Face directory (:func:`potstill.gguf.gguf_model_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from pathlib import Path

import torch

from .errors import UserError
from .gguf import gguf_model_dir, is_gguf_path
from .io import sha256_dir, sha256_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja")


def model_hash(path: str | Path, init: str = "pretrained") -> str:
    """What stands for a local model in stage hashes: the sha256 of its files (of the file, for a GGUF)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf" and path.is_file():
        return sha256_file(path)
    check_model_dir(path, need_weights=(init == "pretrained"))
    return sha256_dir(path, MODEL_FILES)


def model_path(path: str | Path) -> Path:
    """``path`` as a directory: a ``.gguf`` file becomes its converted directory (converted on first
    use, then cached by content); anything else is returned as it is."""
    path = Path(path)

    if is_gguf_path(path) and path.is_file():
        return gguf_model_dir(path)
    return path


def check_model_dir(path: str | Path, need_weights: bool = True) -> Path:
    """The model directory ``path`` (a ``.gguf`` file: its converted directory), or one clear line."""
    path = model_path(path)
    if not path.exists():
        raise UserError("model path does not exist", str(path))
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError("not a model directory (no config.json) or .gguf file", str(path))
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config.json is malformed (line {e.lineno})", str(path)) from None
    if need_weights and not any(path.glob(p) for p in WEIGHT_FILES):
        raise UserError("model directory has no weights (*.safetensors)", str(path))
    return path


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    from transformers import AutoTokenizer  # defers transformers

    path = model_path(path)
    if not path.is_dir():
        raise UserError("tokenizer directory does not exist", str(path))
    if not any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    ):
        raise UserError("no tokenizer files (tokenizer.json / tokenizer_config.json) in this directory", str(path))
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise UserError(f"cannot load tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})", str(path)) from None
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


QLORA_HINT = "pip install 'potstill[qlora]'"


def check_quantize(quantize: str) -> None:
    """One-line UserError unless bitsandbytes and a CUDA GPU are there for ``train.lora.quantize``."""
    if quantize == "none":
        return

    missing = [
        what
        for what, ok in (
            ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None),
            ("a CUDA GPU", torch.cuda.is_available()),
        )
        if not ok
    ]
    if missing:
        raise UserError(
            f"train.lora.quantize={quantize} (QLoRA) needs the bitsandbytes package ({QLORA_HINT}) and a "
            f"CUDA GPU; missing here: {', '.join(missing)}",
            where="train.lora.quantize",
        )


def bnb_config(quantize: str):
    """The ``BitsAndBytesConfig`` of a QLoRA student: ``4bit`` is NF4 with double quantization,
    bfloat16 compute (and bfloat16 storage, which FSDP needs to shard it); ``8bit`` is LLM.int8()."""
    from transformers import BitsAndBytesConfig  # defers transformers

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantize {quantize!r} (expected '4bit' or '8bit')")


def load_model(
    path: str | Path,
    dtype: str = "float32",
    init: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    quantize: str = "none",
):
    """Load a causal LM; ``init='random'`` builds it from config.json with a seeded random init;
    ``quantize`` ``4bit`` / ``8bit`` loads the weights with bitsandbytes (:func:`bnb_config`) onto
    this process's GPU (``LOCAL_RANK`` under a launcher)."""
    from transformers import AutoConfig, AutoModelForCausalLM  # defers transformers

    path = check_model_dir(path, need_weights=(init == "pretrained"))
    if quantize != "none":
        if init != "pretrained":
            raise UserError(
                "train.lora.quantize needs pretrained student weights (student.init: pretrained)", where="student.init"
            )
        check_quantize(quantize)
    try:
        if quantize != "none":
            model = AutoModelForCausalLM.from_pretrained(
                str(path),
                dtype=DTYPES[dtype],
                quantization_config=bnb_config(quantize),
                device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
            )
        elif init == "random":
            config = AutoConfig.from_pretrained(str(path))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load model ({type(e).__name__}: {str(e).splitlines()[0]})", str(path)) from None
    if device:
        model.to(device)
    return model


def param_count(path: str | Path) -> int | None:
    """Parameters of a saved model, read from its safetensors headers (nothing is loaded); None if unknown."""

    total, files = 0, sorted(Path(path).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                total += n
    return total or None


def count_params(model) -> int:
    """Parameters as instantiated (tied weights counted once; DeepSpeed ZeRO-3's partitioned ones in full)."""
    return sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters())


def tokenizer_fingerprint(tok) -> str:
    """Hash of the vocabulary, special tokens and chat template: equal means interchangeable ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps(
        {
            "vocab": vocab,
            "special": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
            "chat_template": tok.chat_template,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
