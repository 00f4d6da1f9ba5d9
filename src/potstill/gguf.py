"""GGUF model files (llama.cpp's format) as potstill models: converted once to a Hugging Face directory.

transformers reads a GGUF file with ``gguf_file=`` and dequantizes its weights, but refuses
``save_pretrained`` on the result. :func:`convert_gguf` moves those weights into a plain model
built from the same config and saves that: ``config.json``, ``model.safetensors``,
``generation_config.json``, the tokenizer with its chat template, and a ``README.md`` model card
whose front matter carries the GGUF's ``general.license`` and ``general.name`` and the file's
sha256 (what the terms gate reads).

:func:`gguf_model_dir` is the cached form, ``$POTSTILL_CACHE/gguf/<sha256>/`` (default
``~/.cache/potstill``): a file is converted once per content. :mod:`potstill.models` calls it for
every ``.gguf`` path, so ``teacher.model``, ``student.model`` and ``potstill serve`` take a GGUF file.

(The third-party ``gguf`` package is imported by absolute name: ``import gguf`` is that package,
not this module.)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from pathlib import Path

import yaml

from .errors import UserError
from .io import atomic_dir, read_json, sha256_bytes, sha256_file, write_json
from .progress import say

MAGIC = b"GGUF"
CARD_KEYS = (
    "general.name",
    "general.basename",
    "general.organization",
    "general.size_label",
    "general.finetune",
    "general.license",
    "general.architecture",
    "general.file_type",
)


def is_gguf_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a GGUF file by its suffix (``.gguf``, any case)."""
    return Path(path).suffix.lower() == ".gguf"


def check_gguf_file(path: str | os.PathLike) -> Path:
    """``path``, or a one-line UserError unless it is a file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise UserError("GGUF file not found", str(path))
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise UserError("not a GGUF file (it does not start with the GGUF magic bytes)", str(path))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's ``general.*`` fields, ``context_length`` and ``n_tokens`` (metadata only; no weights are read).

    A missing file, or one that does not start with the GGUF magic, is a one-line UserError.
    """
    path = check_gguf_file(path)
    from gguf import GGUFReader  # defers gguf (the third-party package; GGUF files only)

    try:
        reader = GGUFReader(path)
    except Exception as e:
        raise UserError(f"cannot read GGUF file ({type(e).__name__}: {_first_line(e)})", str(path)) from None
    meta = {k: _contents(f) for k, f in reader.fields.items() if k.startswith("general.")}
    arch = meta.get("general.architecture")
    meta["context_length"] = _contents(reader.get_field(f"{arch}.context_length")) if arch else None
    tokens = reader.get_field("tokenizer.ggml.tokens")
    meta["n_tokens"] = len(tokens.data) if tokens is not None else None
    return meta


def _contents(field):
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0]


def file_type_name(meta: dict) -> str | None:
    """``Q4_1`` for ``general.file_type`` 3 (llama.cpp's names), else None."""
    from gguf import LlamaFileType  # defers gguf (GGUF files only)

    try:
        return LlamaFileType(meta.get("general.file_type")).name.removeprefix("MOSTLY_")
    except ValueError:
        return None


def model_card(meta: dict, file_name: str, sha256: str, dtype: str, chat_template: bool = True) -> str:
    """README.md of a converted model: YAML front matter (license, base_model, model_name,
    converted_from) and a few lines on where the weights came from."""
    name = meta.get("general.name") or Path(file_name).stem
    base = meta.get("general.basename") or name
    org = meta.get("general.organization")
    front = {}
    if meta.get("general.license"):
        front["license"] = str(meta["general.license"])
    front["base_model"] = f"{org}/{base}" if org and "/" not in str(base) else str(base)
    front["model_name"] = str(name)
    front["converted_from"] = {
        "format": "gguf",
        "file": file_name,
        "sha256": sha256,
        "quantization": file_type_name(meta),
        "dequantized_to": dtype,
        "converter": "potstill convert",
        "gguf_metadata": {k.removeprefix("general."): meta[k] for k in CARD_KEYS if meta.get(k) is not None},
    }
    quant = file_type_name(meta) or "GGUF"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"Converted by `potstill convert` from the GGUF file `{file_name}` (sha256 `{sha256}`).",
        f"The {quant} weights were dequantized to {dtype} by transformers: quantization error is kept.",
        "",
    ]
    if not chat_template:
        lines += [
            (
                "The GGUF file has no chat template (`tokenizer.chat_template`): potstill joins the message "
                "contents as plain text."
            ),
            "",
        ]
    if meta.get("general.license"):
        lines += [f"License (from the GGUF's `general.license`): {meta['general.license']}.", ""]
    else:
        lines += ["The GGUF file states no license (`general.license`): check the original model's terms.", ""]
    return "\n".join(lines)


def _load(path: Path, dtype: str, meta: dict):
    """The model and tokenizer transformers reads from ``path`` (one-line UserErrors when it cannot)."""
    import torch  # defers torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # defers transformers

    arch = meta.get("general.architecture")
    # transformers prefers tokenizer files lying beside the GGUF file to the GGUF's own tokenizer:
    # load from a folder that holds nothing but a link to the file.
    with tempfile.TemporaryDirectory(prefix="potstill-gguf-") as alone:
        os.symlink(path.resolve(), Path(alone) / path.name)
        try:
            model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=path.name, dtype=getattr(torch, dtype))
        except Exception as e:
            import transformers  # defers transformers

            raise UserError(
                f"transformers {transformers.__version__} cannot load this GGUF model (architecture "
                f"{arch!r}; {type(e).__name__}: {_first_line(e)}){_supported(arch)}",
                str(path),
            ) from None
        try:
            tok = AutoTokenizer.from_pretrained(alone, gguf_file=path.name)
        except Exception as e:
            raise UserError(
                f"cannot read the GGUF file's tokenizer ({type(e).__name__}: {_first_line(e)})", str(path)
            ) from None
    return model, tok


def _supported(arch) -> str:
    """'; it reads: llama, mistral, ...' when ``arch`` is not among transformers' GGUF architectures."""
    try:
        from transformers.modeling_gguf_pytorch_utils import (  # defers transformers
            GGUF_SUPPORTED_ARCHITECTURES as known,  # defers transformers
        )
    except ImportError:
        return ""
    known = [a for a in known if a not in ("general", "tokenizer")]
    return "" if arch in known else f"; it reads GGUF files of: {', '.join(known)}"


def _plain_model(model, dtype: str):
    """A plain (serializable) copy of a GGUF-loaded model: same config minus the GGUF quantization
    entry, built on the meta device and given the loaded tensors (no second copy in memory)."""

    import torch  # defers torch
    from transformers import AutoModelForCausalLM  # defers transformers

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def _drop_tokens_past(directory: Path, n_tokens: int) -> list[str]:
    """Remove the tokens the saved tokenizer has past the file's ``n_tokens``: transformers' GPT-2 style
    tokenizer adds its default ``<|endoftext|>`` when the vocabulary lacks one (Llama 3's, for example),
    a token without an embedding row that would also make the tokenizer differ from the original's."""
    tok_file, cfg_file = directory / "tokenizer.json", directory / "tokenizer_config.json"
    data = json.loads(tok_file.read_text(encoding="utf-8"))
    extra = {t["content"] for t in data.get("added_tokens", []) if t["id"] >= n_tokens}
    if not extra:
        return []
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < n_tokens]
    tok_file.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if cfg_file.is_file():  # a special-token slot naming a removed token would add it back on load
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cfg = {k: v for k, v in cfg.items() if not (k.endswith("_token") and v in extra)}
        cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return sorted(extra)


def convert_gguf(
    path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32", sha256: str | None = None
) -> Path:
    """Write ``path`` (a GGUF file) as a Hugging Face model directory ``out_dir`` (atomically) and return it.

    ``dtype`` is what the dequantized weights are stored as (``float32`` keeps them exactly).
    """
    from transformers import AutoTokenizer  # defers transformers

    path, out_dir = Path(path), Path(out_dir)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype {dtype!r} (float32, bfloat16 or float16)")
    meta = read_metadata(path)
    sha256 = sha256 or sha256_file(path)
    model, tok = _load(path, dtype, meta)
    plain = _plain_model(model, dtype)
    del model
    if meta.get("context_length"):
        tok.model_max_length = int(meta["context_length"])
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if meta.get("n_tokens"):
            _drop_tokens_past(tmp, meta["n_tokens"])
        card = model_card(meta, path.name, sha256, dtype, chat_template=tok.chat_template is not None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        saved = AutoTokenizer.from_pretrained(str(tmp))
        if saved.chat_template != tok.chat_template:  # a bug here, not a user error
            raise RuntimeError(f"the chat template did not survive saving the tokenizer of {path}")
        if meta.get("n_tokens") and len(saved) > meta["n_tokens"]:
            raise RuntimeError(f"the tokenizer of {path} has {len(saved)} tokens, the file {meta['n_tokens']}")
    return out_dir


# -- the cache ----------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$POTSTILL_CACHE`` or ``~/.cache/potstill``."""
    return Path(os.environ.get("POTSTILL_CACHE") or Path.home() / ".cache" / "potstill").expanduser()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, remembered (under the cache) by its path, size and mtime so that a
    multi-GB file is hashed once, not on every load."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = cache_root() / "gguf" / "hashes" / f"{sha256_bytes(str(path).encode())}.json"
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if stamp.is_file():
        with contextlib.suppress(UserError, TypeError):
            known = read_json(stamp)
            if {k: known.get(k) for k in key} == key and isinstance(known.get("sha256"), str):
                return known["sha256"]
    digest = sha256_file(path)
    with contextlib.suppress(OSError):
        write_json(stamp, {**key, "sha256": digest})
    return digest


@contextlib.contextmanager
def cache_lock(path: Path):
    """An exclusive lock file (POSIX ``flock``): two processes converting one file wait for each other."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot write the model cache ({e.strerror or e}); set POTSTILL_CACHE to a writable folder",
            str(path.parent),
        ) from None
    try:
        import fcntl  # defers fcntl (POSIX only; Windows has no flock)
    except ImportError:  # no flock (Windows): the atomic rename still keeps the cache consistent
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "README.md").is_file()


def gguf_model_dir(path: str | os.PathLike) -> Path:
    """The Hugging Face directory of a GGUF file: ``cache_root()/gguf/<sha256>/``, converted on first use
    (float32, so the dequantized weights are kept exactly; ``load_model``'s dtype casts at load time)."""
    path = check_gguf_file(path)
    digest = file_sha256(path)
    return cached_conversion(
        "gguf",
        digest,
        _complete,
        lambda out: convert_gguf(path, out, sha256=digest),
        f"gguf: converting {path.name} to a Hugging Face directory (once per file)",
    )


def cached_conversion(kind: str, key: str, complete, build, message: str) -> Path:
    """``cache_root()/kind/key``, built by ``build(out)`` unless ``complete(out)`` already; two processes
    wait for each other under a lock, and ``message`` (plus the path) is said before building."""
    out = cache_root() / kind / key
    if complete(out):
        return out
    with cache_lock(out.with_name(f"{key}.lock")):
        if not complete(out):  # another process may have converted it while we waited
            say(f"{message}: {out}")
            build(out)
    return out
