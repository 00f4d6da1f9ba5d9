"""The ``vllm:DIR`` teacher backend and data-parallel sharding of the generate stage.

Without vLLM (no GPU here): the conversions from vLLM's output objects are tested on
``SimpleNamespace`` fakes, and the wiring (generate stage, pipeline hash, signal capture) on a fake
``vllm`` module whose engine runs the tiny transformers teacher one sequence at a time (a plain
greedy loop with full forward passes, independent of ``LocalGenerator``'s batched ``generate``).
The real engine is tested only where vLLM and a CUDA GPU are present. Sharding is tested with the
local transformers backend.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
import yaml

from potstill.config import VLLMSettings, load_config
from potstill.errors import UserError
from potstill.teachers import vllm as V
from potstill.teachers.base import GenerationSettings

MISSING = "vllm: teacher needs vLLM: pip install 'potstill[vllm]' (Linux + CUDA GPU)"


def lp(v, rank=None):
    return NS(logprob=v, rank=rank, decoded_token=None)


def request(prompt, token_ids, finish, logprobs=None, text="vllm text ", prompt_logprobs=None):
    return NS(
        prompt_token_ids=prompt,
        prompt_logprobs=prompt_logprobs,
        outputs=[NS(token_ids=token_ids, finish_reason=finish, text=text, logprobs=logprobs)],
    )


# ----------------------------------------------------------------------------------------------
# (a) pure conversions


def test_record_from_output_stop_keeps_eos_and_takes_top_k_of_k_plus_one():
    # position 0: the sampled token 9 is not in the top 2 (vLLM adds it: 3 entries); position 1: it is.
    logprobs = [{9: lp(-3.0, 5), 4: lp(-0.5, 1), 7: lp(-1.25, 2)}, {2: lp(-0.1, 1), 5: lp(-2.5, 2)}]
    out = request([1, 2, 3], [9, 2], "stop", logprobs)
    rec = V.record_from_output(out, k=2, decode=lambda ids: f" {ids} ")
    assert rec == {
        "text": "[9]",
        "token_ids": [9, 2],
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "top_logprobs": [[[4, -0.5], [7, -1.25]], [[2, -0.1], [5, -2.5]]],
    }


def test_record_from_output_length_text_rounding_and_ties():
    logprobs = [{3: lp(-0.12345678, 2), 8: lp(-0.12345678, 1), 1: lp(-4.0, 3)}]
    rec = V.record_from_output(request([1], [3], "length", logprobs, text="  hi "), k=2)
    assert rec["text"] == "hi" and rec["finish_reason"] == "length"
    assert rec["top_logprobs"] == [[[8, -0.123457], [3, -0.123457]]]  # equal log-probs: vLLM's rank decides
    assert V.record_from_output(request([1], [3], "length"), k=0)["top_logprobs"] is None
    with pytest.raises(RuntimeError, match="abort"):
        V.record_from_output(request([1], [3], "abort"))
    with pytest.raises(RuntimeError, match="no log-probs"):
        V.record_from_output(request([1], [3], "length"), k=2)


def test_topk_from_prompt_logprobs_positions_padding_and_tail():
    # prompt [5, 6] + response [7, 8]: entry 2 is the distribution over response token 0.
    plp = [
        None,
        {6: lp(-0.7, 1), 1: lp(-1.0, 2)},
        {7: lp(-0.2, 1), 3: lp(-2.0, 2), 40: lp(-2.2, 3)},
        {41: lp(-0.05, 1), 8: lp(-3.5, 4), 2: lp(-3.2, 2), 4: lp(-3.3, 3)},
    ]
    ids, lps = V.topk_from_prompt_logprobs(plp, start=2, n=2, k=2, vocab_size=40)
    assert ids.tolist() == [[7, 3], [2, 4]]  # 40 and 41 are padding rows of the output layer: dropped
    np.testing.assert_allclose(lps, [[-0.2, -2.0], [-3.2, -3.3]], rtol=1e-6)
    with pytest.raises(ValueError, match="first prompt token"):
        V.topk_from_prompt_logprobs(plp, start=0, n=1, k=1)
    with pytest.raises(ValueError, match="fewer than k=3"):
        V.topk_from_prompt_logprobs(plp, start=1, n=1, k=3)
    rows = V.topk_rows(ids, lps)
    assert rows["ids"].dtype == np.int64 and rows["logprobs"].dtype == np.float16
    np.testing.assert_allclose(rows["tail"].astype(float), 1 - np.exp(lps.astype(float)).sum(-1), atol=1e-3)


def test_sampling_kwargs_greedy_and_seeded_sampling():
    greedy = V.sampling_kwargs(GenerationSettings(max_new_tokens=7, top_logprobs=3), [1, 2])
    assert (
        greedy["temperature"] == 0.0 and greedy["max_tokens"] == 7 and greedy["logprobs"] == 3 and "seed" not in greedy
    )
    s = GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, seed=4)
    a, b = V.sampling_kwargs(s, [1, 2]), V.sampling_kwargs(s, [1, 3])
    assert a["temperature"] == 0.7 and a["top_p"] == 0.9 and a["logprobs"] is None
    assert a["seed"] == V.sampling_kwargs(s, [1, 2])["seed"] != b["seed"]  # per prompt, not per batch


# ----------------------------------------------------------------------------------------------
# (b) parse_vllm, and the one-line error without vLLM


def test_parse_vllm():
    assert V.parse_vllm("vllm:/models/llama") == "/models/llama"
    assert V.parse_vllm("vllm:rel/dir") == "rel/dir"
    assert V.parse_vllm("/models/llama") is None and V.parse_vllm("openai:gpt-4o") is None
    with pytest.raises(UserError, match="names no model directory"):
        V.parse_vllm("vllm:")


def test_missing_vllm_is_one_line_user_error(monkeypatch, tiny_teacher_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(UserError) as e:
        V.VLLMGenerator(tiny_teacher_dir, VLLMSettings())
    assert str(e.value) == MISSING


# ----------------------------------------------------------------------------------------------
# A fake `vllm` module: the tiny transformers model, one sequence at a time


class FakeLLM:
    made: list[dict] = []

    def __init__(self, model, **kw):
        from transformers import AutoModelForCausalLM, GenerationConfig

        FakeLLM.made.append({"model": model, **kw})
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        eos = GenerationConfig.from_pretrained(model).eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.calls = []

    @staticmethod
    def _top(row: torch.Tensor, n: int, actual: int | None) -> dict:
        vals, idx = row.topk(n)
        d = {int(i): lp(float(v), r + 1) for r, (i, v) in enumerate(zip(idx, vals))}
        if actual is not None and actual not in d:
            d[actual] = lp(float(row[actual]), int((row > row[actual]).sum()) + 1)
        return d

    @torch.inference_mode()
    def generate(self, prompts, params, use_tqdm=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append(len(prompts))
        outs = []
        for prompt, p in zip(prompts, params):
            ids = list(prompt["prompt_token_ids"])
            plp = None
            if p.prompt_logprobs:
                rows = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].double(), -1)
                plp = [None] + [self._top(rows[j - 1], p.prompt_logprobs, ids[j]) for j in range(1, len(ids))]
            assert p.temperature == 0.0, "the fake engine decodes greedily"
            gen, logprobs, finish = [], [], "length"
            for _ in range(p.max_tokens):
                row = torch.log_softmax(self.model(torch.tensor([ids + gen])).logits[0, -1].double(), -1)
                t = int(row.argmax())
                gen.append(t)
                logprobs.append(self._top(row, p.logprobs, t) if p.logprobs else None)
                if t in self.eos:
                    finish = "stop"
                    break
            outs.append(request(ids, gen, finish, logprobs if p.logprobs else None, text=None, prompt_logprobs=plp))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: NS(**{"logprobs": None, "prompt_logprobs": None, **kw})
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.made = []
    return mod


def write_project(
    root: Path, teacher: str, student: Path, run_dir: str = "run", n: int = 24, extra: dict | None = None
):
    with open(root / "train.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"what is the price of plan {i}?"}) + "\n")
    cfg = {
        "name": "tiny",
        "run_dir": run_dir,
        "seed": 0,
        "prompts": {"sources": [{"path": "train.jsonl"}], "test_fraction": 0.0, "validation": 0.0},
        "teacher": {"model": teacher, "batch_size": 5, "max_new_tokens": 5, "top_logprobs": 3, **(extra or {})},
        "student": {"model": str(student), "init": "random"},
    }
    path = root / f"{run_dir}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def generations(cfg_path: Path) -> list[dict]:
    from potstill.pipeline import open_run, run_stages

    p = open_run(load_config(cfg_path))
    run_stages(p, ["prompts", "generate"])
    return [json.loads(x) for x in (p.run_dir.path("generate") / "generations.jsonl").read_text().splitlines()]


NO_TOP = {"top_logprobs": 0}


def assert_same_answers(a: list[dict], b: list[dict], shift_ok: bool = False) -> None:
    """Equal records, top log-probs to 1e-5 (batch shapes move their last digits). ``shift_ok``: up to
    one constant per position (vLLM normalises over the padded output layer, transformers over the
    tokenizer's vocabulary)."""
    assert [{**r, "top_logprobs": None} for r in a] == [{**r, "top_logprobs": None} for r in b]
    for x, y in zip(a, b):
        assert [[t for t, _ in pos] for pos in x["top_logprobs"]] == [[t for t, _ in pos] for pos in y["top_logprobs"]]
        u, v = (np.array([[v for _, v in pos] for pos in r["top_logprobs"]]) for r in (x, y))
        if shift_ok:
            u, v = u - u[:, :1], v - v[:, :1]
        np.testing.assert_allclose(u, v, atol=1e-5)


def test_vllm_teacher_generate_stage_matches_transformers(fake_vllm, tmp_path, tiny_teacher_dir, tiny_student_dir):
    from potstill.models import model_hash
    from potstill.pipeline import open_run

    rel = os.path.relpath(tiny_teacher_dir, tmp_path)  # resolved against the config's directory
    settings = {"vllm": {"tensor_parallel_size": 2, "enforce_eager": True}}
    hf = generations(write_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir, "run_hf"))
    vl = generations(write_project(tmp_path, f"vllm:{rel}", tiny_student_dir, "run_vllm", extra=settings))
    made = FakeLLM.made[-1]
    assert made["model"] == str(tiny_teacher_dir.resolve()) == made["tokenizer"]
    assert made["tensor_parallel_size"] == 2 and made["enforce_eager"] and made["dtype"] == "float32"
    assert [r["id"] for r in vl] == [r["id"] for r in hf] and len(vl) == 24
    assert_same_answers(vl, hf, shift_ok=True)
    pipe = open_run(load_config(tmp_path / "run_vllm.yaml"))
    prov = json.loads((pipe.run_dir.path("generate") / "_provenance.json").read_text())
    assert pipe.teacher.kind == "vllm" and pipe.teacher.path == tiny_teacher_dir.resolve()
    assert prov["inputs"]["teacher"] == model_hash(tiny_teacher_dir) == pipe.teacher.identity()
    assert "model" not in prov["inputs"]["config"] and "vllm" not in prov["inputs"]["config"]


def test_vllm_teacher_without_vllm_stops_the_stage_with_one_line(
    monkeypatch, capsys, tmp_path, tiny_teacher_dir, tiny_student_dir
):
    from potstill.cli.main import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = write_project(tmp_path, f"vllm:{tiny_teacher_dir}", tiny_student_dir)
    assert main(["prompts", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["generate", str(cfg)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"potstill: error: {MISSING}"


def test_vllm_capture_topk_matches_transformers(fake_vllm, tmp_path, tiny_teacher_dir, make_pairs):
    from potstill.signals import SignalStore
    from potstill.signals.capture import capture_signals

    pairs = make_pairs(6)
    kw = dict(fmt="topk", k=4, temperature=1.0, batch_size=4, teacher_hash="t")
    hf = capture_signals(tiny_teacher_dir, pairs, tmp_path / "hf", **kw)
    vl = capture_signals(tiny_teacher_dir, pairs, tmp_path / "vl", vllm=VLLMSettings(), **kw)
    assert vl["teacher"]["engine"] == "vllm" and "engine" not in hf["teacher"]
    assert FakeLLM.made[-1]["max_logprobs"] == 20
    a, b = SignalStore(tmp_path / "hf"), SignalStore(tmp_path / "vl")
    for p in pairs:
        (ia, pa), (ib, pb) = a.get(p["id"], tail="drop"), b.get(p["id"], tail="drop")
        assert np.array_equal(ia, ib) and (ib < 330 + 8).all()  # the 8 padded output rows are dropped
        # vLLM normalises over the whole output layer (padding rows included: ~0 mass in a trained
        # model, not in this random one), transformers capture over the tokenizer's vocabulary:
        # the log-probs differ by one constant per position.
        d = np.log(pb) - np.log(pa)
        assert np.abs(d - d[:, :1]).max() < 1e-2 and (d <= 1e-2).all()  # float16 storage
    with pytest.raises(UserError, match="T=1 only"):
        capture_signals(tiny_teacher_dir, pairs, tmp_path / "x", vllm=VLLMSettings(), fmt="sampled", draws=8)


# ----------------------------------------------------------------------------------------------
# (c) the real engine (vLLM + CUDA only)


@pytest.fixture(scope="module")
def real_vllm():
    pytest.importorskip("vllm", reason="vLLM not installed (optional extra, needs a CUDA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM tests need a CUDA GPU")


def test_real_vllm_generation_and_capture(real_vllm, tmp_path_factory, make_tiny_llama):
    from potstill.chat import encode_prompt
    from potstill.teachers.hf import LocalGenerator

    # head_dim 64: what vLLM's attention kernels support
    model_dir = make_tiny_llama(tmp_path_factory.mktemp("vllm_teacher"), hidden=128, heads=2, kv_heads=1, seed=3)
    gen = V.VLLMGenerator(
        model_dir,
        VLLMSettings(gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=256),
        dtype="float16",
        max_logprobs=4,
    )
    records = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"what is plan {i}?"}]} for i in range(16)]
    settings = GenerationSettings(max_new_tokens=8, top_logprobs=4)
    got = {r["id"]: r for r in gen.generate(records, settings)}
    ref = {r["id"]: r for r in LocalGenerator(model_dir, dtype="float16", device="cuda").generate(records, settings)}
    assert set(got) == set(ref)
    for r in got.values():
        assert r["finish_reason"] in ("stop", "length") and len(r["top_logprobs"]) == len(r["token_ids"])
        assert r["usage"]["completion_tokens"] == len(r["token_ids"]) <= 8
        assert all(len(pos) == 4 and pos == sorted(pos, key=lambda e: -e[1]) for pos in r["top_logprobs"])
    same = sum(got[i]["token_ids"] == ref[i]["token_ids"] for i in got) / len(got)
    assert same >= 0.5, f"only {same:.0%} of greedy answers match the transformers backend"  # fp16 near-ties flip
    batch = [(encode_prompt(gen.tokenizer, r["messages"]), ref[r["id"]]["token_ids"]) for r in records[:4]]
    for (_p, resp), (ids, lps) in zip(batch, V.vllm_response_topk(gen.llm, batch, 4)):
        assert ids.shape == lps.shape == (len(resp), 4)
        assert (np.diff(lps, axis=1) <= 1e-6).all()


# ----------------------------------------------------------------------------------------------
# (d) data-parallel sharding (local transformers backend)


def run_shard(cfg_path: Path, shard):
    from potstill.pipeline import open_run, run_stages
    from potstill.teachers.stage import generate_shard

    p = open_run(load_config(cfg_path))
    run_stages(p, ["prompts"])
    generate_shard(p, shard)
    return p


def test_shards_then_merge_equal_an_unsharded_run(monkeypatch, tmp_path, tiny_teacher_dir, tiny_student_dir):
    from potstill.teachers import hf
    from potstill.teachers.generate import shard_of

    # no top log-probs: those differ in the 6th decimal with the batch shapes (as after a resume)
    whole = generations(write_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir, "run_whole", extra=NO_TOP))
    expected = (tmp_path / "run_whole" / "generate" / "generations.jsonl").read_bytes()

    cfg = write_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir, "run_sharded", extra=NO_TOP)
    pipe = run_shard(cfg, (0, 2))
    pipe = run_shard(cfg, (1, 2))
    assert not (pipe.run_dir.path("generate") / "_provenance.json").exists()  # shards write no stage
    parts = sorted(pipe.run_dir.root.glob(".work/generate/*/shard-*-of-2.jsonl"))
    assert [p.name for p in parts] == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    ids = [[json.loads(x)["id"] for x in p.read_text().splitlines()] for p in parts]
    assert sorted(ids[0] + ids[1]) == sorted(r["id"] for r in whole) and ids[0] and ids[1]
    assert all(shard_of(i, 2) == s for s in (0, 1) for i in ids[s])

    class NoWork:
        def __init__(self, *a, **k):
            raise AssertionError("a finished shard was generated again")

    monkeypatch.setattr(hf, "LocalGenerator", NoWork)
    before = parts[0].read_bytes()
    run_shard(cfg, (0, 2))  # rerun of a finished shard: nothing to do
    assert parts[0].read_bytes() == before
    generations(cfg)  # the merge: every answer comes from the shards
    merged = tmp_path / "run_sharded" / "generate"
    assert (merged / "generations.jsonl").read_bytes() == expected
    assert json.loads((merged / "stats.json").read_text())["from_shards"] == len(whole)
    assert not parts[0].parent.exists()  # the work folder goes once the stage is written


def test_merge_generates_what_the_shards_left(tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    from potstill.cli.main import main

    whole = generations(write_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir, "run_whole"))
    cfg = write_project(tmp_path, str(tiny_teacher_dir), tiny_student_dir, "run_part")
    assert main(["prompts", str(cfg)]) == 0
    assert main(["generate", str(cfg), "--shard", "3/3"]) == 2  # one-line error
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")  # torchrun's environment: this process is shard 1 of 3
    assert main(["generate", str(cfg)]) == 0
    parts = list((tmp_path / "run_part").glob(".work/generate/*/shard-*.jsonl"))
    assert [p.name for p in parts] == ["shard-1-of-3.jsonl"]
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["generate", str(cfg)]) == 0  # merges shard 1, generates shards 0 and 2's records
    assert_same_answers(generations(cfg), whole)


def test_direct_form_shards_and_api_teacher_refused(tmp_path, tiny_teacher_dir, monkeypatch):
    from potstill.cli.main import main
    from potstill.config import TeacherConfig
    from potstill.teachers.generate import parse_shard, run_generate_shard

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"d{i}", "prompt": f"hello {i}"}) + "\n" for i in range(6)))
    base = [
        "generate",
        "--teacher",
        str(tiny_teacher_dir),
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "3",
    ]
    assert main(base + ["--shard", "0/2"]) == 0 and main(base + ["--shard", "1/2"]) == 0
    assert not (tmp_path / "out" / "generations.jsonl").exists()
    monkeypatch.setattr("potstill.teachers.hf.LocalGenerator", None)  # the merge generates nothing
    assert main(base) == 0
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()] == [
        f"d{i}" for i in range(6)
    ]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    from potstill.teachers.spec import teacher_spec

    with pytest.raises(UserError, match="API teacher"):
        cfg = TeacherConfig(model="openai:gpt-4o-mini")
        run_generate_shard(cfg, teacher_spec(cfg, Path), [], tmp_path, (0, 2))
