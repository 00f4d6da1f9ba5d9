"""Loading local Hugging Face models and tokenizers, with one-line errors for bad paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def check_model_dir(path: str | Path, need_weights: bool = True) -> Path:
    """Fail with one clear line unless ``path`` is a model directory."""
    path = Path(path)
    if not path.exists():
        raise UserError("model path does not exist", str(path))
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError("not a model directory (no config.json)", str(path))
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config.json is malformed (line {e.lineno})", str(path)) from None
    if need_weights and not any(path.glob(p) for p in WEIGHT_FILES):
        raise UserError("model directory has no weights (*.safetensors)", str(path))
    return path


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError("tokenizer directory does not exist", str(path))
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise UserError("no tokenizer files (tokenizer.json / tokenizer_config.json) in this directory", str(path))
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad dir
        raise UserError(f"cannot load tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})", str(path)) from None
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: str = "float32", init: str = "pretrained", seed: int = 0, device: str | None = None):
    """Load a causal LM; ``init='random'`` builds it from config.json with a seeded random init."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = check_model_dir(path, need_weights=(init == "pretrained"))
    try:
        if init == "random":
            config = AutoConfig.from_pretrained(str(path))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load model ({type(e).__name__}: {str(e).splitlines()[0]})", str(path)) from None
    if device:
        model.to(device)
    return model


def count_params(model) -> int:
    """Parameters as instantiated (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


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
