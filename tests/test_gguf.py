"""GGUF files as models: ``potstill convert``, the content-keyed cache, and one-line errors.

A tiny Llama GGUF (hidden 16, 2 layers, float32 tensors, the default test tokenizer with its chat
template) is written locally with the ``gguf`` package's writer; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import CHAT_TEMPLATE
from potstill import gguf as pgguf
from potstill.cli.main import main as cli_main
from potstill.errors import UserError
from potstill.models import check_model_dir, load_model, load_tokenizer, model_path

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 16, 2, 2, 1, 32


def write_tiny_gguf(path: Path, tokenizer_dir: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A random Llama-shaped GGUF with ``tokenizer_dir``'s byte-level BPE vocabulary and merges."""
    import gguf

    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab, merges = tj["model"]["vocab"], tj["model"]["merges"]
    special = {a["content"] for a in tj["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Tiny Test Llama")
    w.add_basename("tiny-test-llama")
    w.add_organization("potstill-tests")
    w.add_license("apache-2.0")
    w.add_file_type(0)  # all float32
    for add, value in (
        (w.add_context_length, 256),
        (w.add_embedding_length, HIDDEN),
        (w.add_block_count, LAYERS),
        (w.add_feed_forward_length, FFN),
        (w.add_head_count, HEADS),
        (w.add_head_count_kv, KV_HEADS),
        (w.add_layer_norm_rms_eps, 1e-5),
        (w.add_rope_freq_base, 10000.0),
        (w.add_rope_dimension_count, HIDDEN // HEADS),
        (w.add_vocab_size, len(tokens)),
    ):
        add(value)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control token
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_pad_token_id(vocab["<pad>"])
    w.add_unk_token_id(vocab["<pad>"])
    w.add_chat_template(CHAT_TEMPLATE)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.2).numpy().astype(np.float32)

    head = HIDDEN // HEADS
    w.add_tensor("token_embd.weight", rand(len(tokens), HIDDEN))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), HIDDEN))
    for i in range(LAYERS):
        for name, shape in (
            ("attn_q", (HIDDEN, HIDDEN)),
            ("attn_k", (KV_HEADS * head, HIDDEN)),
            ("attn_v", (KV_HEADS * head, HIDDEN)),
            ("attn_output", (HIDDEN, HIDDEN)),
            ("ffn_gate", (FFN, HIDDEN)),
            ("ffn_up", (FFN, HIDDEN)),
            ("ffn_down", (HIDDEN, FFN)),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_tokenizer_dir, other_tokenizer_dir) -> Path:
    """The tiny GGUF, lying beside another model's tokenizer files (which must be ignored)."""
    d = tmp_path_factory.mktemp("gguf")
    for f in other_tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    return write_tiny_gguf(d / "tiny-test.F32.gguf", tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_gguf) -> Path:
    """``potstill convert`` of the tiny GGUF."""
    out = tmp_path_factory.mktemp("converted") / "tiny"
    assert cli_main(["convert", str(tiny_gguf), str(out)]) == 0
    return out


def front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def test_convert_writes_a_standard_directory(converted, tiny_gguf, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= names
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (HIDDEN, LAYERS, 330)
    # the GGUF's own tokenizer and chat template, not the decoy tokenizer lying beside the file
    tok, ref = AutoTokenizer.from_pretrained(str(converted)), AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert tok.get_vocab() == ref.get_vocab() and tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "What is two plus two?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    gen = json.loads((converted / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["bos_token_id"] == tok.bos_token_id
    # the saved weights are the dequantized ones transformers reads from the file
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name).eval()
    saved = AutoModelForCausalLM.from_pretrained(str(converted)).eval()
    ids = torch.tensor([tok("What is the capital of France?").input_ids])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, saved(ids).logits)


def test_model_card_front_matter(converted, tiny_gguf):
    fm = front_matter(converted / "README.md")
    assert fm["license"] == "apache-2.0"
    assert fm["base_model"] == "potstill-tests/tiny-test-llama" and fm["model_name"] == "Tiny Test Llama"
    src = fm["converted_from"]
    assert src["format"] == "gguf" and src["file"] == tiny_gguf.name and src["quantization"] == "ALL_F32"
    assert src["sha256"] == pgguf.sha256_file(tiny_gguf) and src["gguf_metadata"]["architecture"] == "llama"


def test_gguf_path_loads_through_the_cache(tiny_gguf, converted, potstill_cache, monkeypatch):
    d = pgguf.gguf_model_dir(tiny_gguf)
    assert d == potstill_cache / "gguf" / pgguf.sha256_file(tiny_gguf)
    assert (d / "README.md").read_text() == (converted / "README.md").read_text()

    def no_second_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(pgguf, "convert_gguf", no_second_conversion)
    monkeypatch.setattr(pgguf, "sha256_file", lambda *a: pytest.fail("hashed the file again"))
    assert model_path(tiny_gguf) == d and check_model_dir(tiny_gguf) == d
    tok = load_tokenizer(tiny_gguf)
    model = load_model(tiny_gguf, dtype="bfloat16")
    assert len(tok) >= 330 and model.dtype == torch.bfloat16 and model.config.vocab_size == 330
    from potstill.teachers.hf import LocalGenerator

    assert LocalGenerator(tiny_gguf, device="cpu").path == d  # what `potstill serve X.gguf` fingerprints


def test_check_takes_gguf_files(tiny_gguf, converted, capsys):
    assert cli_main(["check", str(tiny_gguf), str(converted)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict       same") and "330 rows" in out


def test_bad_gguf_input_is_one_line(tmp_path, tiny_gguf, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    assert cli_main(["convert", str(text), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a GGUF file" in err
    with pytest.raises(UserError, match="not a GGUF file"):
        load_model(text)
    with pytest.raises(UserError, match="model path does not exist"):
        check_model_dir(tmp_path / "missing.gguf")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert cli_main(["convert", str(tiny_gguf), str(tmp_path / "busy")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_unsupported_architecture_is_one_line(tmp_path, tiny_tokenizer_dir, capsys):
    odd = write_tiny_gguf(tmp_path / "odd.gguf", tiny_tokenizer_dir, arch="nosucharch")
    assert cli_main(["convert", str(odd), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("potstill: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "cannot load this GGUF model (architecture 'nosucharch'" in errors[0] and "llama, mistral" in errors[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="nosucharch"):
        pgguf.gguf_model_dir(odd)
    assert not (pgguf.cache_root() / "gguf" / pgguf.sha256_file(odd)).exists()


def test_convert_to_bfloat16(tmp_path, tiny_gguf):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert cli_main(["convert", str(tiny_gguf), str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__ == {torch.bfloat16}
    assert front_matter(out / "README.md")["converted_from"]["dequantized_to"] == "bfloat16"
