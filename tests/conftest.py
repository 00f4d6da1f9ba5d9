"""Shared fixtures: tiny local tokenizers and random Llama models (nothing is downloaded).

* ``tiny_tokenizer_dir`` / ``other_tokenizer_dir`` (session): byte-level BPE tokenizers with a chat
  template and ``<s>``/``</s>``/``<pad>`` tokens; the two have different vocabularies (so different
  :func:`potstill.models.tokenizer_fingerprint`), for tokenizer-mismatch tests.
* ``make_tiny_llama(dir, hidden=16, layers=2, ...)`` (session factory): saves a random
  ``LlamaForCausalLM`` (safetensors) + a tokenizer into ``dir`` and returns ``dir``.
* ``tiny_student_dir`` / ``tiny_teacher_dir`` (session): ready-made models sharing the default
  tokenizer (hidden 16 and 32).
* ``make_pairs(n=8, teacher_dir=None, top_k=0)`` (factory): toy training pairs in the generate
  stage's format; ``top_logprobs`` come from ``teacher_dir``'s forward pass when ``top_k > 0``.
* ``potstill_cache`` (session, autouse): ``POTSTILL_CACHE`` (converted GGUF models) points into a
  session temp folder, so no test writes to ``~/.cache/potstill``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

QA = [
    ("What is the capital of France?", "Paris."),
    ("What is two plus two?", "Four."),
    ("What color is the sky?", "Blue."),
    ("Name a large animal.", "An elephant."),
    ("What do bees make?", "Honey."),
    ("Which planet is red?", "Mars."),
    ("What is frozen water?", "Ice."),
    ("How many legs has a spider?", "Eight."),
    ("What is the opposite of hot?", "Cold."),
    ("Which month comes after May?", "June."),
    ("What do cows drink?", "Water."),
    ("What is the largest ocean?", "The Pacific."),
]
CORPUS = [q + " " + a for q, a in QA] * 3 + [
    "The quick brown fox jumps over the lazy dog.",
    "Distillation trains a small student to imitate a large teacher.",
    "Answer briefly and correctly.",
]
OTHER_CORPUS = [
    "Zebras quietly juggle vexing puzzles while wizards hum.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "Sphinx of black quartz, judge my vow.",
] * 3


def build_tokenizer(out_dir: Path, corpus: list[str], vocab_size: int, chat_template: str | None = CHAT_TEMPLATE):
    """Train a byte-level BPE tokenizer on ``corpus`` and save it (HF format) into ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[3:],
    )
    if chat_template:
        tok.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return tok


# CI runs the property tests (Hypothesis) on a fixed, derandomised set of examples: a red CI run then
# means a change broke something, never that a new random example was drawn. Locally they stay random.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def potstill_cache(tmp_path_factory) -> Path:
    """``POTSTILL_CACHE`` in a session temp folder (restored afterwards)."""
    old = os.environ.get("POTSTILL_CACHE")
    d = tmp_path_factory.mktemp("potstill_cache")
    os.environ["POTSTILL_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("POTSTILL_CACHE", None)
    else:
        os.environ["POTSTILL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """The default tiny tokenizer (vocab ~330, chat template, <s> </s> <pad>)."""
    d = tmp_path_factory.mktemp("tok_default")
    build_tokenizer(d, CORPUS, vocab_size=330)
    return d


@pytest.fixture(scope="session")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer with a different vocabulary (fingerprint differs from ``tiny_tokenizer_dir``)."""
    d = tmp_path_factory.mktemp("tok_other")
    build_tokenizer(d, OTHER_CORPUS, vocab_size=300)
    return d


@pytest.fixture(scope="session")
def make_tiny_llama(tiny_tokenizer_dir, other_tokenizer_dir):
    """Factory ``make_tiny_llama(dir, hidden=16, layers=2, heads=2, kv_heads=1, intermediate=None,
    tokenizer="default"|"other"|Path, vocab_pad=0, seed=0, max_positions=512) -> dir``.

    Saves a random LlamaForCausalLM (safetensors, float32) whose embedding has
    ``len(tokenizer) + vocab_pad`` rows, the tokenizer files, and matching special-token ids.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    def make(
        out_dir,
        hidden: int = 16,
        layers: int = 2,
        heads: int = 2,
        kv_heads: int = 1,
        intermediate: int | None = None,
        tokenizer: str | Path = "default",
        vocab_pad: int = 0,
        seed: int = 0,
        max_positions: int = 512,
    ) -> Path:
        tok_dir = {"default": tiny_tokenizer_dir, "other": other_tokenizer_dir}.get(tokenizer, tokenizer)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in Path(tok_dir).iterdir():
            if f.is_file():
                shutil.copy(f, out_dir / f.name)
        tok = AutoTokenizer.from_pretrained(str(out_dir))
        config = LlamaConfig(
            vocab_size=len(tok) + vocab_pad,
            hidden_size=hidden,
            intermediate_size=intermediate or 2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=max_positions,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(out_dir))
        return out_dir

    return make


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, make_tiny_llama) -> Path:
    """A random Llama (hidden 16, 2 layers) with the default tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("student"), hidden=16, seed=1)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, make_tiny_llama) -> Path:
    """A random Llama (hidden 32, 2 layers) with the default tokenizer and 8 padded embedding rows."""
    return make_tiny_llama(tmp_path_factory.mktemp("teacher"), hidden=32, heads=4, vocab_pad=8, seed=2)


@pytest.fixture
def make_pairs(tiny_tokenizer_dir):
    """Factory ``make_pairs(n=8, teacher_dir=None, top_k=0) -> list[dict]`` of toy Q/A pairs.

    Response ids are the default tokenizer's ids of the answer + ``</s>`` (finish_reason "stop");
    with ``top_k > 0`` each pair gets ``top_logprobs`` from ``teacher_dir``'s forward pass.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))

    def make(n: int = 8, teacher_dir: Path | None = None, top_k: int = 0) -> list[dict]:
        pairs = []
        for i in range(n):
            q, a = QA[i % len(QA)]
            messages = [{"role": "user", "content": q}]
            resp = tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id]
            pairs.append(
                {
                    "id": f"p{i}",
                    "messages": messages,
                    "response_text": a,
                    "response_token_ids": resp,
                    "finish_reason": "stop",
                    "top_logprobs": None,
                }
            )
        if top_k and teacher_dir is not None:
            model = AutoModelForCausalLM.from_pretrained(str(teacher_dir)).eval()
            for p in pairs:
                prompt = tok.apply_chat_template(
                    p["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
                )
                ids = list(prompt) + p["response_token_ids"]
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0, len(prompt) - 1 : -1, : len(tok)]
                lp, top = torch.log_softmax(logits.double(), -1).topk(top_k, dim=-1)
                p["top_logprobs"] = [[[int(t), float(v)] for t, v in zip(r_ids, r_lp)] for r_ids, r_lp in zip(top, lp)]
        return pairs

    return make


@pytest.fixture(scope="session")
def serve_model():
    """Factory ``serve_model(model_dir, name="tiny", api_key=None, **backend_kw) -> (url, backend)``:
    ``potstill serve``'s app for a local model, run by uvicorn in a background thread on a free port.
    ``backend=`` serves a ready backend (e.g. a routing gateway) instead of ``model_dir``."""
    import socket
    import threading
    import time

    import uvicorn

    from potstill.serve import HFBackend, create_app

    servers = []

    def start(model_dir=None, name="tiny", api_key=None, max_body_bytes=4 * 1024 * 1024, backend=None, **backend_kw):
        if backend is None:
            backend = HFBackend.from_dir(model_dir, model_name=name, **backend_kw)
        app = create_app(backend, api_key=api_key, max_body_bytes=max_body_bytes)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not srv.started and time.time() < deadline:
            time.sleep(0.02)
        assert srv.started, "server did not start"
        servers.append((srv, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}", backend

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def tiny_project():
    """Factory ``tiny_project(root, teacher, student=None, floor=False, **sections) -> config path``: a
    one-method (sft) run on 20 training and 4 test prompts with 4-token answers, judge and routing off;
    ``student`` is a model directory (random init) or a ``student`` section; ``sections`` replace whole
    config sections."""
    import json

    import yaml

    def make(root: Path, teacher, student=None, floor: bool = False, **sections) -> Path:
        with open(root / "train.jsonl", "w") as f:
            for i in range(20):
                f.write(json.dumps({"id": f"q{i}", "prompt": f"what is the price of plan {i}?"}) + "\n")
        with open(root / "test.jsonl", "w") as f:
            for i in range(4):
                f.write(json.dumps({"id": f"t{i}", "prompt": f"how do I reset password number {100 + i}?"}) + "\n")
        if student is not None and not isinstance(student, dict):
            student = {"model": str(student), "init": "random"}
        cfg = {
            "name": "c",
            "run_dir": "run",
            "prompts": {
                "sources": [{"path": "train.jsonl"}],
                "test": [{"path": "test.jsonl"}],
                "validation": 0.0,
                "test_fraction": 0.0,
            },
            "teacher": {"model": str(teacher), "batch_size": 8, "max_new_tokens": 4},
            "student": student,
            "train": {"methods": ["sft"], "epochs": 1, "batch_size": 8, "max_seq_len": 48},
            "eval": {
                "splits": ["test"],
                "max_new_tokens": 4,
                "teacher_forced": False,
                "include_floor": floor,
                "bootstrap_samples": 100,
                "judge": False,
            },
            "route": {"enabled": False},
            **sections,
        }
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        return root / "c.yaml"

    return make
