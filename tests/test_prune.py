"""Pruning a teacher into a student (potstill.prune): function kept when nothing (or only dead parts) is cut,
importance picks the dead parts first, outputs load with plain transformers, prune.json, one-line errors."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from potstill.errors import UserError
from potstill.io import sha256_dir
from potstill.prune.calibration import calibration_hash, calibration_ids
from potstill.prune.run import prune_model
from potstill.prune.settings import PruneSettings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _calibration(vocab: int, n: int = 12, length: int = 14, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length - i % 5)] for i in range(n)]


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _logits(model, vocab: int) -> torch.Tensor:
    """Logits of a right-padded batch of two sequences (padding masked)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits * mask[..., None]


def _edit(src: Path, dst: Path, fn) -> Path:
    """Copy the model at ``src`` to ``dst`` with ``fn(model)`` applied to its weights."""
    model = _load(src)
    with torch.no_grad():
        fn(model)
    model.save_pretrained(str(dst))
    for f in src.iterdir():
        if f.name in TOKENIZER_FILES:
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def gqa_teacher(tmp_path_factory, make_tiny_llama) -> Path:
    """Llama: 4 layers, hidden 32, 4 query heads on 2 KV heads (head_dim 8), MLP 64, untied."""
    return make_tiny_llama(
        tmp_path_factory.mktemp("gqa"), hidden=32, layers=4, heads=4, kv_heads=2, intermediate=64, seed=3
    )


def _tiny(tmp_path_factory, tiny_tokenizer_dir, kind: str) -> Path:
    import transformers as tf

    out = tmp_path_factory.mktemp(kind)
    for f in Path(tiny_tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    tok = tf.AutoTokenizer.from_pretrained(str(out))
    cls_cfg, cls = {
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "tied": (tf.LlamaConfig, tf.LlamaForCausalLM),
    }[kind]
    config = cls_cfg(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = cls(config)
        with torch.no_grad():  # non-zero biases and norm weights, so cutting them wrongly shows
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
                elif "norm" in name:
                    p.uniform_(0.5, 1.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def qwen2_teacher(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Qwen2 (q/k/v biases), tied embeddings: 3 layers, hidden 32, 4 heads on 2 KV heads, MLP 48."""
    return _tiny(tmp_path_factory, tiny_tokenizer_dir, "qwen2")


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return _tiny(tmp_path_factory, tiny_tokenizer_dir, "tied")


def _vocab(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


def _prune(teacher: Path, out: Path, calibration=None, **settings):
    calibration = calibration if calibration is not None else _calibration(_vocab(teacher))
    return prune_model(teacher, out, PruneSettings(**settings), calibration, device="cpu")


@pytest.mark.parametrize(
    "targets",
    [
        {},
        {
            "num_layers": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    ],
)
def test_nothing_pruned_keeps_the_teachers_function(gqa_teacher, tmp_path, targets):
    summary = _prune(gqa_teacher, tmp_path / "s", **targets)
    vocab = _vocab(gqa_teacher)
    assert torch.allclose(_logits(_load(tmp_path / "s"), vocab), _logits(_load(gqa_teacher), vocab), atol=1e-5)
    assert summary["student_params"] == summary["teacher_params"]
    assert summary["kept_layers"] == [0, 1, 2, 3]


def test_pruned_model_loads_with_plain_transformers_and_matches_targets(gqa_teacher, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "s"
    summary = _prune(gqa_teacher, out, num_layers=2, hidden_size=24, intermediate_size=40, num_attention_heads=2)
    model = _load(out)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 24, 40)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 8)  # whole KV groups dropped
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (16, 24) and layer.self_attn.k_proj.weight.shape == (8, 24)
    assert layer.self_attn.o_proj.weight.shape == (24, 16) and layer.mlp.down_proj.weight.shape == (24, 40)
    assert model.model.embed_tokens.weight.shape[1] == 24 and model.lm_head.weight.shape[1] == 24
    assert summary["student_params"] == sum(p.numel() for p in model.parameters())
    assert summary["shape"]["hidden_size"] == 24
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and (out / "generation_config.json").is_file()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What do bees make?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary dir left behind


def test_query_heads_pruned_within_kv_groups(gqa_teacher, tmp_path):
    _prune(gqa_teacher, tmp_path / "s", num_attention_heads=2, num_key_value_heads=2)
    cfg = _load(tmp_path / "s").config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 2)
    kept = json.loads((tmp_path / "s" / "prune.json").read_text())["kept"]
    assert all(len(h) == 2 and h[0] in (0, 1) and h[1] in (2, 3) for h in kept["heads"])  # one per group
    assert kept["kv_heads"] == [[0, 1]] * 4


DEAD_HIDDEN = [3, 9, 17, 30]  # 4 of them: the student's hidden size stays a multiple of its heads


def _kill_parts(model):
    """Dead parts of a teacher that pruning must find: layer 1 (identity), KV group 1 of layer 0 (with its
    query heads 2 and 3), MLP channel 5 of every layer, and hidden channels DEAD_HIDDEN (zero in the residual
    stream)."""
    layers = model.model.layers
    layers[1].self_attn.o_proj.weight.zero_()
    layers[1].mlp.down_proj.weight.zero_()
    layers[0].self_attn.v_proj.weight[8:16] = 0
    for layer in layers:
        layer.mlp.up_proj.weight[5] = 0
        layer.self_attn.o_proj.weight[DEAD_HIDDEN] = 0
        layer.mlp.down_proj.weight[DEAD_HIDDEN] = 0
    model.model.embed_tokens.weight[:, DEAD_HIDDEN] = 0


def test_importance_finds_the_dead_parts_first(gqa_teacher, tmp_path):
    teacher = _edit(gqa_teacher, tmp_path / "t", _kill_parts)
    _prune(teacher, tmp_path / "s", num_layers=3, hidden_size=28, intermediate_size=63, num_attention_heads=2)
    record = json.loads((tmp_path / "s" / "prune.json").read_text())
    kept, imp = record["kept"], record["importance"]
    assert kept["layers"] == [0, 2, 3] and imp["layers"][1] == pytest.approx(0, abs=1e-6)
    assert kept["hidden"] == [c for c in range(32) if c not in DEAD_HIDDEN]
    assert all(imp["hidden"][c] == pytest.approx(0, abs=1e-6) for c in DEAD_HIDDEN)
    assert all(5 not in m for m in kept["mlp"]) and all(imp_l[5] == 0 for imp_l in imp["mlp"])
    assert kept["kv_heads"][0] == [0] and kept["heads"][0] == [0, 1]
    assert imp["heads"][0][2] == imp["heads"][0][3] == 0


def test_cutting_only_dead_parts_keeps_the_function(gqa_teacher, tmp_path):
    """Slicing is consistent everywhere: with only dead parts cut (and the RMSNorm weights rescaled for the
    hidden channels that were always 0), the student computes the teacher's logits."""
    teacher = _edit(gqa_teacher, tmp_path / "t", _kill_parts)
    _prune(teacher, tmp_path / "s", num_layers=3, hidden_size=28, intermediate_size=63, rescale_norms=True)
    vocab = _vocab(teacher)
    want = _logits(_load(teacher), vocab)
    assert torch.allclose(_logits(_load(tmp_path / "s"), vocab), want, atol=1e-4)
    _prune(teacher, tmp_path / "plain", num_layers=3, hidden_size=28, intermediate_size=63, rescale_norms=False)
    assert not torch.allclose(_logits(_load(tmp_path / "plain"), vocab), want, atol=1e-3)  # RMS over 28, not 32


def test_depth_metric_loss_is_the_loss_increase_when_a_layer_is_skipped(gqa_teacher, tmp_path):
    from potstill.prune.importance import lm_loss

    teacher = _edit(gqa_teacher, tmp_path / "t", _kill_parts)
    calibration = _calibration(_vocab(teacher))
    _prune(teacher, tmp_path / "s", calibration, num_layers=3, depth_metric="loss")
    record = json.loads((tmp_path / "s" / "prune.json").read_text())
    imp = record["importance"]
    assert imp["layer_metric"] == "loss" and imp["layers"][1] == pytest.approx(0, abs=1e-7)
    model = _load(teacher)
    base = lm_loss(model, calibration, 4, pad_id=0)
    with torch.no_grad():  # skipping layer 2 == making it the identity
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    assert imp["layers"][2] == pytest.approx(lm_loss(model, calibration, 4, pad_id=0) - base, rel=1e-3, abs=1e-7)
    dropped = min(range(4), key=lambda i: imp["layers"][i])
    assert record["kept"]["layers"] == [i for i in range(4) if i != dropped]


def test_qwen2_with_biases(qwen2_teacher, tmp_path):
    vocab = _vocab(qwen2_teacher)
    _prune(qwen2_teacher, tmp_path / "same")
    assert torch.allclose(_logits(_load(tmp_path / "same"), vocab), _logits(_load(qwen2_teacher), vocab), atol=1e-5)

    def kill_group(model):  # KV group 1 of every layer outputs exactly 0 (weights and biases)
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[8:16] = 0
            layer.self_attn.v_proj.bias[8:16] = 0

    teacher = _edit(qwen2_teacher, tmp_path / "t", kill_group)
    _prune(teacher, tmp_path / "s", num_attention_heads=2)
    model = _load(tmp_path / "s")
    attn = model.model.layers[0].self_attn
    assert model.config.model_type == "qwen2" and attn.q_proj.bias.shape == (16,) and attn.k_proj.bias.shape == (8,)
    assert torch.allclose(_logits(model, vocab), _logits(_load(teacher), vocab), atol=1e-5)
    _prune(qwen2_teacher, tmp_path / "small", num_layers=2, hidden_size=20, intermediate_size=30)
    assert _load(tmp_path / "small").config.layer_types == ["full_attention"] * 2


def test_mistral(tmp_path_factory, tiny_tokenizer_dir, tmp_path):
    teacher = _tiny(tmp_path_factory, tiny_tokenizer_dir, "mistral")
    vocab = _vocab(teacher)
    _prune(teacher, tmp_path / "same")
    assert torch.allclose(_logits(_load(tmp_path / "same"), vocab), _logits(_load(teacher), vocab), atol=1e-5)
    _prune(teacher, tmp_path / "s", num_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=24)
    model = _load(tmp_path / "s")
    assert model.config.model_type == "mistral" and model.model.layers[1].self_attn.q_proj.weight.shape == (16, 16)
    assert torch.isfinite(_logits(model, vocab)).all()


def test_tied_embeddings_stay_tied(tied_llama, tmp_path):
    from safetensors import safe_open

    _prune(tied_llama, tmp_path / "s", hidden_size=20)
    model = _load(tmp_path / "s")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(str(tmp_path / "s" / "model.safetensors"), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert emb.shape[1] == 20 and torch.equal(model.lm_head.weight, emb)
    assert torch.isfinite(_logits(model, _vocab(tied_llama))).all()


def test_prune_json_records_the_derivation(gqa_teacher, tmp_path):
    calibration = _calibration(_vocab(gqa_teacher), n=10)
    summary = _prune(
        gqa_teacher, tmp_path / "s", calibration, num_layers=3, hidden_size=16, calibration_samples=6, seed=4
    )
    record = json.loads((tmp_path / "s" / "prune.json").read_text())
    settings = PruneSettings(num_layers=3, hidden_size=16, calibration_samples=6, seed=4)
    used = calibration_ids(calibration, None, settings, _vocab(gqa_teacher))
    assert len(used) == 6 and record["calibration"] == {
        "sequences": 6,
        "tokens": sum(map(len, used)),
        "hash": calibration_hash(used),
    }
    assert record["teacher"]["path"] == str(gqa_teacher.resolve())
    assert record["teacher"]["model_hash"] == sha256_dir(
        gqa_teacher, ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja")
    )
    assert record["settings"] == settings.model_dump(mode="json")
    assert (
        record["teacher"]["params"]
        == summary["teacher_params"]
        > record["student"]["params"]
        == summary["student_params"]
    )
    assert record["student"]["shape"]["num_layers"] == 3 and record["teacher"]["shape"]["num_layers"] == 4
    assert len(record["importance"]["layers"]) == 4 and len(record["importance"]["hidden"]) == 32
    assert len(record["importance"]["heads"]) == 4 and len(record["importance"]["mlp"][0]) == 64
    assert record["kept"]["counts"] == {"layers": 3, "hidden": 16, "heads": 4, "kv_heads": 2, "mlp": 64}
    assert len(record["kept"]["layers"]) == 3 and len(record["kept"]["hidden"]) == 16
    assert record["seconds"] > 0 and record["versions"]["transformers"]


def test_chat_records_calibrate_through_the_chat_template(gqa_teacher, tmp_path):
    from potstill.models import load_tokenizer

    records = [
        {"messages": [{"role": "user", "content": "What is two plus two?"}], "response_text": "Four."},
        {"messages": [{"role": "user", "content": "What color is the sky?"}]},
    ]
    summary = _prune(gqa_teacher, tmp_path / "s", records, num_layers=3)
    tok = load_tokenizer(gqa_teacher)
    prompt0 = tok.apply_chat_template(
        records[0]["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = calibration_ids(records, tok, PruneSettings(), _vocab(gqa_teacher))
    assert ids[0] == list(prompt0) + tok("Four.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert summary["calibration_tokens"] == sum(map(len, ids))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"hidden_size": 64}, "prune.hidden_size: 64 is more than the teacher's 32"),
        ({"num_layers": 5}, "prune.num_layers: 5 is more than the teacher's 4"),
        ({"hidden_size": 30}, "prune.hidden_size: 30 is not a multiple of the 4 attention heads kept"),
        ({"num_attention_heads": 3}, "prune.num_attention_heads: 3 query heads cannot be whole KV groups"),
        ({"num_attention_heads": 3, "num_key_value_heads": 2}, "3 query heads do not divide into 2 KV heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, "4 per group, more than the teacher's 2"),
    ],
)
def test_bad_targets_are_one_line_user_errors(gqa_teacher, tmp_path, settings, message):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("old")
    with pytest.raises(UserError) as err:
        _prune(gqa_teacher, tmp_path / "s", **settings)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "s" / "keep.txt").read_text() == "old"  # the output dir is untouched


@pytest.mark.parametrize(
    "calibration, message",
    [
        ([], "no calibration data"),
        ([{"prompt": "hi"}], "calibration record 0 has no 'messages' list"),
        ([[1, 2], [10_000]], "calibration record 1 has a token id outside"),
        (["text"], "neither a chat record"),
    ],
)
def test_bad_calibration_is_a_user_error(gqa_teacher, tmp_path, calibration, message):
    with pytest.raises(UserError, match=message):
        _prune(gqa_teacher, tmp_path / "s", calibration)


def test_unsupported_architecture_is_a_user_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(str(tmp_path / "g"))
    with pytest.raises(UserError, match="cannot prune a 'gpt2' model"):
        _prune(tmp_path / "g", tmp_path / "s", [[1, 2, 3]])


def test_settings_are_documented_and_checked():
    assert all(f.description for f in PruneSettings.model_fields.values())
    for bad in (
        {"num_layers": 0},
        {"hidden_size": -1},
        {"calibration_samples": 0},
        {"max_seq_len": 1},
        {"aggregation": "max"},
        {"depth_metric": "grad"},
        {"target_params": 10},
    ):
        with pytest.raises(ValidationError):
            PruneSettings(**bad)
