"""A Hugging Face Llama-family directory written as one GGUF file, the format llama.cpp and Ollama load.

:func:`export_gguf` reads ``config.json``, the safetensors weights and the tokenizer, and writes
what llama.cpp's own ``convert_hf_to_gguf.py`` would for the same model:

* tensor names from the ``gguf`` package's name map (``model.layers.0.self_attn.q_proj.weight`` is
  ``blk.0.attn_q.weight``); no ``output.weight`` when the embeddings are tied;
* Llama's ``q_proj`` / ``k_proj`` rows permuted per head into llama.cpp's rotary layout (transformers'
  GGUF loader permutes them back); Qwen2 needs no permutation;
* weights as ``f32``, ``f16``, ``q8_0`` or ``q4_0``: 1-D tensors (norms, biases) stay float32, and a
  matrix whose rows are not whole 32-value blocks stays float16; under ``q4_0`` the output
  projection (the embedding, when tied) is ``q8_0``, as llama.cpp keeps it at higher precision;
* the byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``): tokens in id order, padded with
  unused ``[PAD<id>]`` entries up to the embedding's rows, merges, special ids, whether a BOS is
  added, the pre-tokenizer's llama.cpp name and the chat template.

The file is written under a temporary name beside ``out_path`` and renamed at the end: a failure
leaves nothing at ``out_path``. (``import gguf`` is the third-party package, not ``potstill.gguf``.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np

from ..errors import UserError
from ..io import atomic_path

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
# config.json ``model_type`` -> llama.cpp architecture (Mistral is written as Llama, as llama.cpp does)
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
PERMUTED = (gguf.MODEL_ARCH.LLAMA,)  # rotary layout differs from Hugging Face's: q/k rows are permuted
Q = gguf.GGMLQuantizationType
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
# the split regexes of Llama 3's and Qwen2's tokenizer.json (they differ in how digits group) ->
# llama.cpp's ``tokenizer.ggml.pre`` names
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLITS = {_WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe", _WORDS + r"\p{N}" + _REST: "qwen2"}
GENERATION_TAG = re.compile(r"{%-?\s*(end)?generation\s*-?%}")


def export_gguf(model_dir: Path, out_path: Path, *, dtype: str = "f16", metadata: dict | None = None) -> Path:
    """Write the model in ``model_dir`` to the GGUF file ``out_path`` and return ``out_path``.

    ``dtype`` is one of :data:`GGUF_TYPES`. ``metadata`` holds extra keys to write (``general.name``,
    ``general.license``, ``general.description``, custom ones like ``potstill.provenance``), each a
    str, int, float, bool or list of str; ``general.name`` defaults to the directory's name. Bad
    input (no config.json, no weights, an architecture or tokenizer GGUF cannot hold) is a one-line
    UserError, raised before anything is written.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if dtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {dtype!r} (expected one of: {', '.join(GGUF_TYPES)})", str(out_path))
    config = read_config(model_dir)
    arch = ARCHS[config["model_type"]]
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    meta = {"general.name": model_dir.resolve().name, **(metadata or {})}
    clash = [k for k in meta if k.startswith(("tokenizer.", f"{arch_name}.")) or k == "general.architecture"]
    if clash:
        raise ValueError(f"metadata may not set what the exporter writes: {', '.join(clash)}")
    weights = read_weights(model_dir)
    n_vocab = weights["model.embed_tokens.weight"].shape[0]
    tokenizer = tokenizer_fields(model_dir, n_vocab)
    tensors = list(gguf_tensors(weights, config, arch, dtype))  # empties ``weights`` as it converts

    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch_name)
        writer.add_type(gguf.GGUFType.MODEL)
        add_metadata(writer, meta)
        add_hyperparameters(writer, config, n_vocab)
        writer.add_file_type(FILE_TYPES[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(writer, tokenizer)
        for name, array, qtype in tensors:
            writer.add_tensor(name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def read_config(model_dir: Path) -> dict:
    """``config.json`` of a model GGUF can hold, or a one-line UserError."""
    if not model_dir.is_dir():
        raise UserError("model directory does not exist", str(model_dir))
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError("not a model directory (no config.json)", str(model_dir))
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config.json is malformed (line {e.lineno})", str(model_dir)) from None
    arch = config.get("model_type")
    if arch not in ARCHS:
        raise UserError(
            f"cannot export a {arch} model to GGUF (supported: {', '.join(ARCHS)}); use --format ct2", str(model_dir)
        )
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(
            f"cannot export rope scaling {rope.get('rope_type', rope.get('type'))!r} to GGUF yet; use --format ct2",
            str(model_dir),
        )
    return config


def read_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The model's safetensors weights as float32 arrays (``model.safetensors`` or its shards)."""
    from safetensors import safe_open  # defers safetensors

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [model_dir / "model.safetensors"]
    if not all(f.is_file() for f in files):
        raise UserError("model directory has no weights (model.safetensors)", str(model_dir))
    weights = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                weights[key] = st.get_tensor(key).float().numpy()
    if "model.embed_tokens.weight" not in weights:
        raise UserError("the weights have no model.embed_tokens.weight", str(model_dir))
    return weights


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from Hugging Face's rotary layout (halves) to llama.cpp's (pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_type(name: str, array: np.ndarray, dtype: str, tied: bool) -> Q:
    """The GGML type ``name`` is stored as under ``dtype`` (llama.cpp's choices, see the module doc)."""
    if array.ndim == 1 or dtype == "f32":
        return Q.F32
    if dtype == "f16" or array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    return Q.Q4_0 if dtype == "q4_0" and not is_output else Q.Q8_0


def gguf_tensors(weights: dict[str, np.ndarray], config: dict, arch, dtype: str):
    """``(gguf name, data, GGML type)`` for each weight, renamed by gguf's name map and converted."""
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tied = bool(config.get("tie_word_embeddings"))
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    for hf_name in list(weights):
        array = weights.pop(hf_name)  # one float32 copy of the model at a time, not two
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for the tensor {hf_name}; use --format ct2")
        if arch in PERMUTED and ".self_attn.q_proj." in hf_name:
            array = permute(array, n_head)
        elif arch in PERMUTED and ".self_attn.k_proj." in hf_name:
            array = permute(array, n_kv)
        qtype = tensor_type(name, array, dtype, tied)
        yield name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), qtype


def add_hyperparameters(writer: gguf.GGUFWriter, config: dict, n_vocab: int) -> None:
    """The shape of the model, under the architecture's keys."""
    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(n_vocab)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def add_metadata(writer: gguf.GGUFWriter, metadata: dict) -> None:
    """Each ``key: value`` with the writer call of its type (bool before int: a bool is an int)."""
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            (writer.add_uint32 if 0 <= value < 2**32 else writer.add_int64)(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            writer.add_array(key, list(value))
        else:
            raise TypeError(f"metadata {key!r}: cannot write a {type(value).__name__} to GGUF")


def pre_tokenizer_name(tokenizer_json: dict, model_dir: Path) -> str:
    """llama.cpp's name for the byte-level BPE pre-tokenizer of ``tokenizer.json`` (a UserError for others)."""
    model_type = tokenizer_json.get("model", {}).get("type")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if model_type == "BPE" and kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if model_type == "BPE" and kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if model_type == "BPE" and kinds == ["Split", "ByteLevel"] and steps[0]["pattern"].get("Regex") in SPLITS:
        return SPLITS[steps[0]["pattern"]["Regex"]]
    raise UserError(
        f"cannot export this tokenizer to GGUF (a {model_type} model, pre-tokenizer {' + '.join(map(str, kinds))}; "
        "supported: byte-level BPE as in GPT-2, SmolLM, Llama 3, Qwen2); use --format ct2",
        str(model_dir),
    )


def tokenizer_fields(model_dir: Path, n_vocab: int) -> dict:
    """What the GGUF says about the tokenizer: tokens and types in id order, merges, special ids, template."""
    from ..models import load_tokenizer  # defers transformers

    if not (model_dir / "tokenizer.json").is_file():
        raise UserError("no tokenizer.json (GGUF export needs a fast byte-level BPE tokenizer)", str(model_dir))
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    pre = pre_tokenizer_name(tokenizer_json, model_dir)
    tok = load_tokenizer(model_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise UserError(
            f"the tokenizer has ids up to {max(by_id)} but the embedding only {n_vocab} rows", str(model_dir)
        )
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id.get(i, f"[PAD{i}]"))  # an embedding row no token uses
            types.append(gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    probe = tok("a").input_ids
    template = tok.chat_template
    return {
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]],
        "ids": {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id},
        "add_bos": tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id],
        "add_eos": tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id],
        # transformers' {% generation %} marks (assistant masks) are no-ops elsewhere, and not every engine parses them
        "chat_template": GENERATION_TAG.sub("", template) if isinstance(template, str) else template,
    }


def add_tokenizer(writer: gguf.GGUFWriter, fields: dict) -> None:
    """The ``tokenizer.*`` keys of a byte-level BPE (llama.cpp's ``gpt2``) vocabulary."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "pad": writer.add_pad_token_id,
        "unk": writer.add_unk_token_id,
    }
    for which, token_id in fields["ids"].items():
        if token_id is not None:
            adders[which](token_id)
    writer.add_add_bos_token(fields["add_bos"])
    writer.add_add_eos_token(fields["add_eos"])
    if fields["chat_template"]:
        writer.add_chat_template(fields["chat_template"])
