"""``potstill.export.gguf``: tiny local Llama / Qwen2 directories written as GGUF and read back.

Three readers check each file: transformers (``gguf_file=``: weights, greedy answers, tokenizer,
chat template), the ``gguf`` package's reader (tensor names and types, metadata keys), and
potstill's own GGUF loader. The student is ``tiny_teacher_dir`` (hidden 32, 4 query heads sharing
1 key/value head, 8 embedding rows past the tokenizer): its rows are whole 32-value blocks, so the
quantized types really quantize. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch

from conftest import CHAT_TEMPLATE
from potstill.chat import encode_prompt
from potstill.errors import UserError
from potstill.export.gguf import GGUF_TYPES, export_gguf, pre_tokenizer_name
from potstill.models import load_model, load_tokenizer, model_path

PROMPTS = [
    "What is the capital of France?",
    "What is two plus two?",
    "What color is the sky?",
    "Name a large animal.",
    "What do bees make?",
    "Which planet is red?",
    "How many legs has a spider? 8 or 10?",
    "What is 1234 + 5678?",
    "Which month comes after May?",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "line one\nline two",
    "Café, naïve, déjà vu.",
    "Distillation trains a small student.",
    "It's what we'll do, isn't it?",
    "<|end|> inside a message",
    "UPPER lower MiXeD",
    "tabs\tand punctuation!?;:",
    "emoji 🙂 and symbols © ≠",
    "Answer briefly and correctly.",
]
LLAMA3_SPLIT = (  # Llama 3's tokenizer.json
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
METADATA = {
    "general.name": "tiny-student",
    "general.license": "apache-2.0",
    "general.description": "# tiny-student\n\nA model card.",
    "potstill.provenance": json.dumps({"teacher": "tiny-teacher", "terms": "ok"}),
}


def error_bound(kind: str, block_max: torch.Tensor) -> torch.Tensor:
    """Largest |error| a block of 32 weights may have once quantized to ``kind`` and read back.

    The block's scale ``d`` is its max |weight| over the top quantized level (127 for Q8_0; 8 for
    Q4_0, whose value opposite the max is clipped by up to one step); rounding to a level costs up to
    half a step (one for Q4_0), and ``d`` itself is stored as float16 (2**-11 relative, or 2**-25
    absolute below float16's normal range), an error every level multiplies.
    """
    levels, steps = {"Q8_0": (127, 0.5), "Q4_0": (8, 1.0)}[kind]
    d = block_max / levels
    return steps * d + levels * (d * 2**-11 + 2**-25)


TAGGED_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ m['content'] }}",
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
    "{% else %}{{ m['content'] }}{% endif %}",
)


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


def load_dir(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def greedy(model, tok, n_new: int = 12) -> list[list[int]]:
    """Greedy continuations of every prompt (chat-formatted), one at a time (no padding)."""
    out = []
    for text in PROMPTS:
        ids = encode_prompt(tok, [{"role": "user", "content": text}])
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0
            )
        out.append(gen[0, len(ids) :].tolist())
    return out


def gguf_names(model_dir: Path, arch=gguf.MODEL_ARCH.LLAMA) -> dict[str, str]:
    """Hugging Face weight name -> GGUF tensor name, by gguf's own name map."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {k: names.get_name(k, try_suffixes=(".weight", ".bias")) for k in f.keys()}  # noqa: SIM118


def field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_teacher_dir) -> dict[str, Path]:
    """``tiny_teacher_dir`` exported at every type, each file alone in its folder."""
    root = tmp_path_factory.mktemp("exported")
    return {
        t: export_gguf(tiny_teacher_dir, root / t / f"tiny.{t}.gguf", dtype=t, metadata=METADATA) for t in GGUF_TYPES
    }


@pytest.fixture(scope="module")
def reference(tiny_teacher_dir):
    """The directory's own model, tokenizer and greedy answers."""
    model, tok = load_dir(tiny_teacher_dir), load_tokenizer(tiny_teacher_dir)
    return model, tok, greedy(model, tok)


@pytest.mark.parametrize("dtype", GGUF_TYPES)
def test_transformers_reads_back_the_weights(dtype, exported, reference, tiny_teacher_dir):
    model, _, _ = reference
    path = exported[dtype]
    loaded = load_gguf(path)
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    names = gguf_names(tiny_teacher_dir)
    want, got = model.state_dict(), loaded.state_dict()
    assert loaded.config.vocab_size == model.config.vocab_size and not loaded.config.tie_word_embeddings
    for hf_name, name in names.items():
        a, b = want[hf_name], got[hf_name]
        kind = stored[name]
        if kind == "F32":
            assert torch.equal(a, b), hf_name  # q/k too: the head permutation is undone exactly
        elif kind == "F16":
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6, msg=hf_name)
        else:
            blocks, err = a.reshape(-1, 32), (b - a).reshape(-1, 32)
            assert (err.abs().amax(1) <= error_bound(kind, blocks.abs().amax(1))).all(), hf_name
            assert err.abs().max() > 0  # it really is quantized
    expect = {"f32": {"F32"}, "f16": {"F32", "F16"}, "q8_0": {"F32", "Q8_0"}, "q4_0": {"F32", "Q8_0", "Q4_0"}}
    assert set(stored.values()) == expect[dtype]
    if dtype == "q4_0":  # the output projection is kept at 8 bits, as llama.cpp does
        assert stored["output.weight"] == "Q8_0" and stored["blk.0.ffn_down.weight"] == "Q4_0"


def test_greedy_answers_match(exported, reference):
    """Greedy answers are the directory's at f32. On this random model the top two logits are often
    near-ties, so f16 / q8_0 rounding may flip a token (the weights test bounds their error, and the
    trained helpdesk model agrees 20/20 at q8_0); their logits must stay close."""
    model, tok, want = reference
    ids = [torch.tensor([encode_prompt(tok, [{"role": "user", "content": t}])]) for t in PROMPTS]
    with torch.no_grad():
        logits = torch.cat([model(x).logits[0] for x in ids])
    agree, drift = {}, {}
    for dtype in ("f32", "f16", "q8_0"):
        loaded = load_gguf(exported[dtype])
        agree[dtype] = sum(g == w for g, w in zip(greedy(loaded, tok), want))
        with torch.no_grad():
            drift[dtype] = float((torch.cat([loaded(x).logits[0] for x in ids]) - logits).abs().max() / logits.std())
    print("greedy agreement of 20:", agree, "max logit drift / logit std:", drift)
    assert agree["f32"] == len(PROMPTS) and drift["f32"] == 0
    assert drift["f16"] < 1e-2 and drift["q8_0"] < 0.1


def test_transformers_reads_back_the_tokenizer(exported, reference):
    from transformers import AutoTokenizer

    _, ref, _ = reference
    path = exported["q8_0"]
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tok.chat_template == CHAT_TEMPLATE
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
    for text in PROMPTS:
        messages = [{"role": "user", "content": text}]
        assert encode_prompt(tok, messages) == encode_prompt(ref, messages), text
        assert tok(text).input_ids == ref(text).input_ids, text
        assert tok.decode(ref(text).input_ids) == text


def test_gguf_reader_sees_names_types_and_metadata(exported, tiny_teacher_dir):
    reader = gguf.GGUFReader(exported["q8_0"])
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    assert set(tensors) == set(gguf_names(tiny_teacher_dir).values())
    assert {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"} <= set(tensors)
    assert tensors["blk.0.attn_q.weight"] == "Q8_0" and tensors["blk.0.attn_norm.weight"] == "F32"
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    for key, value in METADATA.items():
        assert field(reader, key) == value
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "llama.attention.head_count_kv") == 1 and field(reader, "llama.embedding_length") == 32
    tok = load_tokenizer(tiny_teacher_dir)
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    n = len(tok)
    assert len(tokens) == field(reader, "llama.vocab_size") == n + 8  # padded up to the embedding's rows
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 8)] and set(types[n:]) == {gguf.TokenType.UNUSED}
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[tok("the").input_ids[0]] == gguf.TokenType.NORMAL
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False  # the chat template writes the BOS


def test_potstill_loads_the_export(exported, reference):
    model, tok, _ = reference
    converted = model_path(exported["f32"])
    loaded = load_model(exported["f32"])
    assert converted.is_dir() and converted != exported["f32"].parent
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": PROMPTS[0]}])])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A Llama with tied embeddings, head_dim 16 (not hidden / heads = 8) and a chat template that marks
    the assistant's turns with transformers' ``{% generation %}`` tags."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tied")
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    tok = AutoTokenizer.from_pretrained(str(d))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        rope_theta=5000.0,
    )
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(str(d))
    (d / "chat_template.jinja").write_text(TAGGED_TEMPLATE)
    return d


def test_tied_embeddings_and_wide_heads(tmp_path, tied_dir):
    path = export_gguf(tied_dir, tmp_path / "tied.gguf", dtype="f32")
    reader = gguf.GGUFReader(path)
    assert "output.weight" not in {t.name for t in reader.tensors}
    assert field(reader, "llama.attention.key_length") == 16 and field(reader, "llama.rope.freq_base") == 5000.0
    model, loaded = load_dir(tied_dir), load_gguf(path)
    assert loaded.config.tie_word_embeddings and loaded.config.head_dim == 16
    template = field(reader, "tokenizer.chat_template")  # without the tags, which not every engine parses
    assert "{% generation %}" not in template and "{% generation %}" in TAGGED_TEMPLATE
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    ref, tok = load_tokenizer(tied_dir), load_tokenizer(tied_dir)
    tok.chat_template = template
    assert tok.apply_chat_template(conversation, tokenize=False) == ref.apply_chat_template(
        conversation, tokenize=False
    )
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_qwen2_round_trip(tmp_path, tiny_tokenizer_dir):
    """Qwen2: q/k/v biases, no head permutation."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path / "qwen"
    shutil.copytree(tiny_tokenizer_dir, d)
    tok = AutoTokenizer.from_pretrained(str(d))
    config = Qwen2Config(
        vocab_size=len(tok) + 8,  # room for the <|endoftext|> transformers' Qwen2Tokenizer adds
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(4)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # random, not zero, biases
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.k_proj.bias.normal_()
    model.save_pretrained(str(d))
    path = export_gguf(d, tmp_path / "out" / "qwen.gguf", dtype="f32")
    assert field(gguf.GGUFReader(path), "general.architecture") == "qwen2"
    loaded = load_gguf(path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_teacher_dir, monkeypatch):
    out = tmp_path / "out" / "model.gguf"

    def fails(model_dir, match, dtype="f16"):
        with pytest.raises(UserError, match=match) as err:
            export_gguf(model_dir, out, dtype=dtype)
        assert "\n" not in str(err.value) and not out.exists()

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    fails(gpt2, r"cannot export a gpt2 model to GGUF \(supported: llama, .*\); use --format ct2")
    fails(tmp_path / "missing", "model directory does not exist")
    fails(tiny_teacher_dir, "unknown GGUF type 'q3_k'", dtype="q3_k")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_teacher_dir / "config.json", no_weights)
    fails(no_weights, "no weights")
    word_level = tmp_path / "word_level"
    shutil.copytree(tiny_teacher_dir, word_level)
    tj = json.loads((word_level / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (word_level / "tokenizer.json").write_text(json.dumps(tj))
    fails(word_level, "cannot export this tokenizer to GGUF .*Whitespace.*ct2")
    assert not out.parent.exists()  # nothing was written for bad input

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_teacher_dir, out, dtype="q8_0")
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary sibling


def test_metadata_types(tmp_path, tiny_student_dir):
    meta = {"potstill.flag": True, "potstill.count": 3, "potstill.score": 0.25, "potstill.tags": ["a", "b"]}
    reader = gguf.GGUFReader(export_gguf(tiny_student_dir, tmp_path / "m.gguf", dtype="f32", metadata=meta))
    assert {k: field(reader, k) for k in meta} == meta
    assert field(reader, "general.name") == tiny_student_dir.name
    types = {k: reader.get_field(k).types[0] for k in meta}
    assert types["potstill.flag"] == gguf.GGUFValueType.BOOL and types["potstill.count"] == gguf.GGUFValueType.UINT32
    with pytest.raises(ValueError, match="tokenizer.chat_template"):
        export_gguf(tiny_student_dir, tmp_path / "x.gguf", metadata={"tokenizer.chat_template": "x"})
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    ("pre_tokenizer", "name"),
    [
        ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}],
            },
            "smollm",
        ),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"},
                    {"type": "ByteLevel", "use_regex": False},
                ],
            },
            "llama-bpe",
        ),
        ({"type": "Metaspace", "replacement": "\u2581"}, None),
    ],
)
def test_pre_tokenizer_names(pre_tokenizer, name, tmp_path):
    tokenizer_json = {"model": {"type": "BPE"}, "pre_tokenizer": pre_tokenizer}
    if name is None:
        with pytest.raises(UserError, match="Metaspace.*ct2"):
            pre_tokenizer_name(tokenizer_json, tmp_path)
    else:
        assert pre_tokenizer_name(tokenizer_json, tmp_path) == name
