"""Offline teacher signals: store formats, provenance, integrity, adapters, capture, features, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from potstill.errors import UserError
from potstill.io import read_json, sha256_file
from potstill.models import load_model, load_tokenizer, tokenizer_fingerprint
from potstill.signals import (
    SignalStore,
    TopLogprobsTargets,
    capture_signals,
    encode_rows,
    sparse_from_top_logprobs,
    write_manifest,
    write_shard,
)
from potstill.signals import formats as F
from potstill.train.data import Collator, build_features, open_signal_store, pair_ids

V = 97


def zipf_logits(n: int, v: int = V, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prior = -1.1 * torch.log(torch.randperm(v, generator=g).float() + 2)
    return prior + 3.0 * torch.randn(n, v, generator=g)


def make_store(
    path: Path, fmt: str, lengths=(5, 0, 7, 3), temperature=1.0, k=6, draws=16, sampling="systematic", shards=2
) -> tuple[dict, dict]:
    """A store of random examples ``e0..``; returns (manifest, {id: logits})."""
    logits = {f"e{i}": zipf_logits(n, seed=i) for i, n in enumerate(lengths)}
    ids = list(logits)
    per = -(-len(ids) // shards)
    records = []
    for si in range(shards):
        members = ids[si * per : (si + 1) * per]
        rows = [
            (
                e,
                encode_rows(
                    fmt,
                    logits[e],
                    temperature,
                    k=k,
                    draws=draws,
                    sampling=sampling,
                    rng=np.random.default_rng(si * 100 + j),
                ),
                f"{j:016x}",
            )
            for j, e in enumerate(members)
        ]
        records.append(write_shard(path, si, fmt, rows, V, k=k, draws=draws))
    settings = {
        "format": fmt,
        "k": k if fmt == "topk" else (V if fmt == "dense" else None),
        "draws": draws if fmt == "sampled" else None,
        "sampling": sampling if fmt == "sampled" else None,
        "temperature": temperature,
        "vocab_size": V,
    }
    m = write_manifest(path, settings, records, {"tokenizer": {"fingerprint": "x", "path": "t"}})
    return m, logits


# ---------------------------------------------------------------------------------------------
# Formats and round trips


def test_packing_fits_three_bytes_at_llama3_vocab():
    v, n = 128256, 48
    assert F.id_bits(v) == 17 and F.id_bytes(v) == 3 and F.entry_bytes(v, n) == 3 and F.entry_bytes(v, 128) == 3
    assert (
        F.entry_bytes(v, 129) == 4
        and F.entry_bytes(152064, 64) == 3
        and F.entry_bytes(262144, 64) == 3
        and F.entry_bytes(262145, 64) == 4
    )
    ids = np.array([0, 1, v - 1, 65536, 131071 & (v - 1)])
    counts = np.array([1, n, 7, 2, 48])
    rows = {"nuniq": np.array([5]), "ids": ids, "counts": counts}
    packed = F.pack_rows("sampled", rows, v, n)
    assert packed["entries"].shape == (5, 3) and packed["entries"].dtype == np.uint8
    vals = F.unpack(packed["entries"])
    assert (vals & ((1 << 17) - 1)).tolist() == ids.tolist()
    assert ((vals >> 17) + 1).tolist() == counts.tolist()


@pytest.mark.parametrize("fmt", ["dense", "topk", "sampled"])
def test_round_trip_each_format(tmp_path, fmt):
    m, logits = make_store(tmp_path / "s", fmt, temperature=2.0)
    store = SignalStore(tmp_path / "s", verify="open")
    assert len(store) == 4 and store.format == fmt and store.temperature == 2.0 and m["positions"] == 15
    assert [store.length(e) for e in ("e0", "e1", "e2", "e3")] == [5, 0, 7, 3]
    for eid, z in logits.items():
        ids, probs = store.get(eid)
        p = torch.softmax(z / 2.0, -1).numpy()
        assert ids.shape == probs.shape and ids.shape[0] == z.shape[0] and probs.dtype == np.float32
        if not len(z):
            continue
        if fmt == "dense":
            assert ids.shape[1] == V and (ids == np.arange(V)).all()
            np.testing.assert_allclose(probs, p, atol=1e-3)
        elif fmt == "topk":
            top = np.argsort(-p, axis=1)[:, :6]
            assert (np.sort(ids, 1) == np.sort(top, 1)).all()
            want = np.take_along_axis(p, ids, 1)
            np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=3e-3)
            _, raw = store.get(eid, tail="drop")
            np.testing.assert_allclose(raw, want, rtol=3e-3)
            np.testing.assert_allclose(store.get_tail(eid), 1 - want.sum(1), atol=2e-3)
        else:
            np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
            counts = np.rint(probs * 16).astype(int)
            dense = np.zeros_like(p)
            for t in range(len(ids)):
                for i, c in zip(ids[t], counts[t]):
                    dense[t, i] += c
            # systematic sampling: every count is floor or ceil of N p
            assert (np.abs(dense - 16 * p) < 1 + 1e-6).all()


def test_sampled_bytes_per_token_is_entries_plus_one(tmp_path):
    m, _ = make_store(tmp_path / "s", "sampled", lengths=(40, 40), draws=16, shards=1)
    shard = m["shards"][0]
    assert shard["files"]["nuniq"]["shape"] == [80] and shard["files"]["entries"]["shape"][1] == F.entry_bytes(V, 16)
    entries = shard["entries"]
    assert m["shard_bytes"] == sum(f["bytes"] for f in shard["files"].values())
    assert m["shard_bytes"] - 2 * 128 == 80 + entries * F.entry_bytes(V, 16)  # .npy headers are 128 bytes


@pytest.mark.parametrize("sampling", ["systematic", "multinomial"])
def test_sampled_estimator_is_unbiased(sampling):
    z = zipf_logits(1, seed=3)[0]
    p = torch.softmax(z.double(), -1).numpy()
    reps, n = 4000, 12
    rows = encode_rows("sampled", z.expand(reps, V), 1.0, draws=n, sampling=sampling, rng=np.random.default_rng(0))
    est = np.zeros(V)
    np.add.at(est, rows["ids"], rows["counts"])
    est /= reps * n
    var = p * (1 - p) / n if sampling == "multinomial" else np.minimum(p, 1 / n) / n
    assert (np.abs(est - p) <= 5 * np.sqrt(var / reps) + 4 / (reps * n)).all()  # + slack for rare tokens (Poisson)
    assert rows["nuniq"].min() >= 1 and rows["counts"].sum() == reps * n


# ---------------------------------------------------------------------------------------------
# Integrity


def test_truncated_shard_is_an_error_naming_it(tmp_path):
    make_store(tmp_path / "s", "sampled")
    f = tmp_path / "s" / "shard-00001.entries.npy"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"shard-00001 is truncated") as e:
        SignalStore(tmp_path / "s", verify="off")
    assert "shard-00001.entries.npy" in str(e.value)


def test_missing_shard_and_incomplete_store(tmp_path):
    make_store(tmp_path / "s", "topk")
    (tmp_path / "s" / "shard-00000.tail.npy").unlink()
    with pytest.raises(UserError, match="shard-00000.tail.npy"):
        SignalStore(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(UserError, match="incomplete signal store"):
        SignalStore(tmp_path / "s")


@pytest.mark.parametrize("fmt", ["dense", "topk", "sampled"])
def test_flipped_byte_is_an_error_naming_the_shard(tmp_path, fmt):
    make_store(tmp_path / "s", fmt)
    arr = {"dense": "probs", "topk": "logprobs", "sampled": "entries"}[fmt]
    f = tmp_path / "s" / f"shard-00001.{arr}.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # a low bit: a plausible value, caught by the hash
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"shard-00001 is corrupted: its sha256") as e:
        SignalStore(tmp_path / "s", verify="open")
    assert f.name in str(e.value)
    lazy = SignalStore(tmp_path / "s")  # lazy: shard 0 reads fine, shard 1 fails on first read
    lazy.get("e0")
    with pytest.raises(UserError, match="shard-00001"):
        lazy.get("e3")


def test_damaged_counts_are_caught_without_the_hash(tmp_path):
    make_store(tmp_path / "s", "sampled", draws=16)
    f = tmp_path / "s" / "shard-00000.entries.npy"
    data = bytearray(f.read_bytes())
    data[128 + 2] ^= 0x80  # top byte of the first entry: the count bits
    f.write_bytes(bytes(data))
    store = SignalStore(tmp_path / "s", verify="off")
    with pytest.raises(UserError, match=r"shard-00000 is corrupted: .*not 16 draws per position") as e:
        store.get("e0")
    assert "shard-00000.entries.npy" in str(e.value)


def test_store_is_picklable_and_reads_after(tmp_path):
    import pickle

    make_store(tmp_path / "s", "sampled")
    store = SignalStore(tmp_path / "s")
    a = store.get("e2")
    b = pickle.loads(pickle.dumps(store)).get("e2")
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


# ---------------------------------------------------------------------------------------------
# Capture on a tiny teacher


def reference_logits(teacher_dir, pair) -> torch.Tensor:
    tok = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir).eval()
    prompt, resp = pair_ids(tok, pair)
    with torch.no_grad():
        z = model(torch.tensor([prompt + resp])).logits[0]
    return z[len(prompt) - 1 : len(prompt) + len(resp) - 1, : len(tok)]


def test_capture_end_to_end_matches_the_teacher(tmp_path, tiny_teacher_dir, make_pairs):
    pairs = make_pairs(7)
    pairs[2]["response_token_ids"] = pairs[2]["response_token_ids"] * 3  # uneven lengths: left padding
    m = capture_signals(tiny_teacher_dir, pairs, tmp_path / "dense", fmt="dense", temperature=2.0, batch_size=3)
    tok = load_tokenizer(tiny_teacher_dir)
    from potstill.models import model_hash

    assert m["format"] == "dense" and m["temperature"] == 2.0 and m["vocab_size"] == len(tok) and m["k"] == len(tok)
    assert m["teacher"]["model_hash"] == model_hash(tiny_teacher_dir)
    assert (
        m["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)
        and len(m["tokenizer"]["chat_template_sha256"]) == 64
    )
    assert m["created"] and m["examples"] == 7
    for shard in m["shards"]:
        for spec in shard["files"].values():
            assert sha256_file(tmp_path / "dense" / spec["file"]) == spec["sha256"]
    store = SignalStore(tmp_path / "dense")
    for pair in (pairs[0], pairs[2], pairs[6]):
        _, probs = store.get(pair["id"])
        want = torch.softmax(reference_logits(tiny_teacher_dir, pair) / 2.0, -1).numpy()
        np.testing.assert_allclose(probs, want, atol=2e-3)

    m2 = capture_signals(tiny_teacher_dir, pairs, tmp_path / "topk", fmt="topk", k=5, temperature=2.0, batch_size=4)
    assert m2["k"] == 5 and m2["draws"] is None
    ids, probs = SignalStore(tmp_path / "topk").get(pairs[2]["id"], tail="drop")
    want = torch.softmax(reference_logits(tiny_teacher_dir, pairs[2]) / 2.0, -1).numpy()
    np.testing.assert_allclose(probs, np.take_along_axis(want, ids, 1), rtol=5e-3)

    m3 = capture_signals(
        tiny_teacher_dir, pairs, tmp_path / "sampled", fmt="sampled", draws=24, temperature=2.0, batch_size=2, seed=5
    )
    assert m3["draws"] == 24 and m3["sampling"] == "systematic" and m3["entry_bytes"] == 2
    again = capture_signals(
        tiny_teacher_dir, pairs, tmp_path / "sampled2", fmt="sampled", draws=24, temperature=2.0, batch_size=5, seed=5
    )
    s1, s2 = SignalStore(tmp_path / "sampled"), SignalStore(tmp_path / "sampled2")
    for p in pairs:  # seeded per example: batching does not change the draws
        a, b = s1.get(p["id"]), s2.get(p["id"])
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert again["shards"][0]["files"]["entries"]["sha256"] == m3["shards"][0]["files"]["entries"]["sha256"]


def test_capture_resumes_by_shard(tmp_path, tiny_teacher_dir, make_pairs, monkeypatch):
    import potstill.signals.capture as cap

    pairs = make_pairs(6)
    kw = dict(fmt="topk", k=4, batch_size=2, shard_mb=1e-5 * 4 * 2)  # a few positions per shard
    work, out = tmp_path / "work", tmp_path / "out"
    m = capture_signals(tiny_teacher_dir, pairs, out, work_dir=work, **kw)
    assert len(m["shards"]) >= 3
    first = SignalStore(out).get("p4")
    (work / "shard-00001.logprobs.npy").unlink()  # as if killed while writing shard 1
    calls = []
    real = cap.teacher_response_logits
    monkeypatch.setattr(cap, "teacher_response_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    m2 = capture_signals(tiny_teacher_dir, pairs, tmp_path / "out2", work_dir=work, **kw)
    assert len(calls) == 1  # only shard 1 was recomputed
    assert m2["shards"][0]["files"] == m["shards"][0]["files"]
    again = SignalStore(tmp_path / "out2").get("p4")
    assert (again[0] == first[0]).all() and np.allclose(again[1], first[1])
    assert not list((tmp_path / "out2").glob("shard-*.json"))  # records folded into the manifest
    m3 = capture_signals(tiny_teacher_dir, pairs, tmp_path / "out2", **kw)  # a finished store: nothing to do
    assert len(calls) == 1 and m3["created"] == m2["created"]
    m4 = capture_signals(tiny_teacher_dir, pairs, tmp_path / "out2", **{**kw, "k": 3})  # other settings: redone
    assert len(calls) > 1 and m4["k"] == 3 and SignalStore(tmp_path / "out2").get("p4")[0].shape[1] == 3


def test_capture_refuses_bad_settings(tmp_path, tiny_teacher_dir, make_pairs):
    pairs = make_pairs(2)
    with pytest.raises(UserError, match="draws"):
        capture_signals(tiny_teacher_dir, pairs, tmp_path / "x", fmt="sampled", draws=0)
    with pytest.raises(UserError, match="unknown signal format"):
        capture_signals(tiny_teacher_dir, pairs, tmp_path / "x", fmt="bogus")
    with pytest.raises(UserError, match="appears twice"):
        capture_signals(tiny_teacher_dir, pairs + pairs[:1], tmp_path / "x", fmt="topk")


# ---------------------------------------------------------------------------------------------
# Training features


def test_features_from_a_store_are_lazy_and_aligned(tmp_path, tiny_teacher_dir, tiny_student_dir, make_pairs):
    pairs = make_pairs(5)
    capture_signals(tiny_teacher_dir, pairs, tmp_path / "s", fmt="sampled", draws=8, temperature=1.5)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    store = open_signal_store(tmp_path / "s", tok, temperature=1.5)
    feats = build_features(pairs, tok, max_seq_len=256, reuse_teacher_ids=True, targets=store)
    assert all("target_ref" in f and "target_ids" not in f for f in feats)
    batch = Collator(tok.pad_token_id)(feats[:3])
    ids, probs = batch["target_ids"], batch["target_probs"]
    assert ids.shape[:2] == batch["labels"].shape and ids.shape == probs.shape
    resp = batch["labels"] != -100
    assert torch.allclose(probs.sum(-1)[resp], torch.ones(int(resp.sum())))
    assert (probs.sum(-1)[~resp] == 0).all()
    for i, p in enumerate(pairs[:3]):
        want_ids, want_p = store.get(p["id"])
        rows = resp[i].nonzero().squeeze(1)
        assert (ids[i, rows, : want_ids.shape[1]] == torch.from_numpy(want_ids)).all()
        assert torch.equal(probs[i, rows, : want_p.shape[1]], torch.from_numpy(want_p))
    short = build_features(pairs, tok, max_seq_len=8, reuse_teacher_ids=True, targets=store)
    b2 = Collator(tok.pad_token_id)(short[:2])
    assert torch.allclose(b2["target_probs"].sum(-1)[b2["labels"] != -100], torch.tensor(1.0))


def test_features_refuse_a_store_of_other_data(tmp_path, tiny_teacher_dir, tiny_student_dir, make_pairs):
    pairs = make_pairs(4)
    capture_signals(tiny_teacher_dir, pairs, tmp_path / "s", fmt="topk", k=3)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    store = open_signal_store(tmp_path / "s", tok, temperature=1.0)
    other = make_pairs(4)
    other[1]["response_token_ids"] = other[1]["response_token_ids"][:-1] + [5, other[1]["response_token_ids"][-1]]
    with pytest.raises(UserError, match="pair 'p1': the teacher signal has"):
        build_features(other, tok, 256, True, targets=store)
    other = make_pairs(4)
    other[2]["messages"] = [{"role": "user", "content": "Something else?"}]
    with pytest.raises(UserError, match="pair 'p2': the teacher signal was captured on other prompt"):
        build_features(other, tok, 256, True, targets=store)
    with pytest.raises(UserError, match="pair 'p4' has no teacher signal"):
        build_features(make_pairs(6), tok, 256, True, targets=store)


def test_store_refuses_another_tokenizer_and_temperature(tmp_path, tiny_teacher_dir, make_pairs, make_tiny_llama):
    capture_signals(tiny_teacher_dir, make_pairs(2), tmp_path / "s", fmt="sampled", draws=4)
    other = load_tokenizer(make_tiny_llama(tmp_path / "other", tokenizer="other"))
    teacher_tok = load_tokenizer(tiny_teacher_dir)
    with pytest.raises(UserError) as e:
        open_signal_store(tmp_path / "s", other, temperature=1.0)
    msg = str(e.value)
    assert tokenizer_fingerprint(other)[:12] in msg and tokenizer_fingerprint(teacher_tok)[:12] in msg
    assert "student" in msg and "s" in msg
    with pytest.raises(UserError, match=r"temperature 1 but train.kd.temperature is 2"):
        open_signal_store(tmp_path / "s", teacher_tok, temperature=2.0)


# ---------------------------------------------------------------------------------------------
# Generate-stage and API top_logprobs through the same interface


def test_generate_top_logprobs_match_a_topk_store(tmp_path, tiny_teacher_dir, tiny_student_dir, make_pairs):
    pairs = make_pairs(3, teacher_dir=tiny_teacher_dir, top_k=5)
    capture_signals(tiny_teacher_dir, pairs, tmp_path / "s", fmt="topk", k=5, temperature=2.0)
    store = SignalStore(tmp_path / "s")
    src = TopLogprobsTargets(pairs, temperature=2.0)
    for p in pairs:
        a_ids, a_p = src.get(p["id"])
        b_ids, b_p = store.get(p["id"])
        assert src.length(p["id"]) == store.length(p["id"]) == len(p["response_token_ids"])
        assert (a_ids == b_ids).all()
        np.testing.assert_allclose(a_p, b_p, rtol=5e-3)
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    feats = build_features(pairs, tok, 256, True, targets=src)
    batch = Collator(tok.pad_token_id)(feats)
    resp = batch["labels"] != -100
    assert torch.allclose(batch["target_probs"].sum(-1)[resp], torch.tensor(1.0))


def test_openai_top_logprobs_resolve_through_the_tokenizer(tiny_student_dir):
    tok = load_tokenizer(tiny_student_dir)
    ids = tok(" Paris is the capital", add_special_tokens=False).input_ids[:3]
    lps = [-0.1, -2.5, -4.0]

    def entry(i, lp, with_bytes=True):
        text = tok.decode([i])
        d = {"token": text, "logprob": lp}
        if with_bytes:
            d["bytes"] = list(text.encode("utf-8"))
        return d

    content = [{"token": "x", "logprob": -0.1, "top_logprobs": [entry(i, lp) for i, lp in zip(ids, lps)]}]
    got_ids, got_p = sparse_from_top_logprobs(content, tokenizer=tok)
    assert got_ids.tolist() == [ids]
    np.testing.assert_allclose(got_p[0], np.exp(lps) / np.exp(lps).sum(), rtol=1e-6)
    # bare top_logprobs lists without bytes, legacy {token: logprob} dicts, and generate records agree
    plain = sparse_from_top_logprobs([[entry(i, lp, False) for i, lp in zip(ids, lps)]], tokenizer=tok)
    legacy = sparse_from_top_logprobs([{tok.decode([i]): lp for i, lp in zip(ids, lps)}], tokenizer=tok)
    mine = sparse_from_top_logprobs([[[i, lp] for i, lp in zip(ids, lps)]])
    for other in (plain, legacy, mine):
        assert (other[0] == got_ids).all() and np.allclose(other[1], got_p)
    text = sparse_from_top_logprobs([[[tok.decode([i]), lp] for i, lp in zip(ids, lps)]], tokenizer=tok)
    assert (text[0] == got_ids).all() and np.allclose(text[1], got_p)  # top_logprobs_text rows
    raw = sparse_from_top_logprobs([[[i, lp] for i, lp in zip(ids, lps)]], renormalize=False)
    np.testing.assert_allclose(raw[1][0], np.exp(lps), rtol=1e-6)
    with pytest.raises(UserError, match="'zebra-quux' is not a token"):
        sparse_from_top_logprobs([[{"token": "zebra-quux", "logprob": -1.0}]], tokenizer=tok)
    with pytest.raises(UserError, match="outside the vocabulary"):
        sparse_from_top_logprobs([[[10**6, -1.0]]], vocab_size=len(tok))


# ---------------------------------------------------------------------------------------------
# potstill capture (the CLI module, called directly)


def test_cli_capture_writes_run_signals_and_skips_when_done(tmp_path, tiny_teacher_dir, tiny_student_dir, capsys):
    from potstill import api
    from potstill.cli import capture as cli_capture

    with open(tmp_path / "train.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"what is item {i}?"}) + "\n")
    cfg = {
        "name": "t",
        "run_dir": "run",
        "seed": 0,
        "prompts": {"sources": [{"path": "train.jsonl"}], "test_fraction": 0.2, "validation": 0.0},
        "teacher": {"model": str(tiny_teacher_dir), "batch_size": 8, "max_new_tokens": 5},
        "student": {"model": str(tiny_student_dir)},
        "train": {"kd": {"signal": "store", "temperature": 1.0}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    api.prompts(tmp_path / "c.yaml")
    api.generate(tmp_path / "c.yaml")

    parser = argparse.ArgumentParser()
    cli_capture.add_parser(parser.add_subparsers())
    args = parser.parse_args(["capture", str(tmp_path / "c.yaml"), "--format", "sampled", "--draws", "20"])
    assert args.func(args) == 0
    sig = tmp_path / "run" / "signals"
    m = read_json(sig / "manifest.json")
    assert m["format"] == "sampled" and m["draws"] == 20 and (sig / "_provenance.json").is_file()
    from potstill.config import load_config
    from potstill.pipeline import open_run

    pairs = open_run(load_config(tmp_path / "c.yaml")).pairs()
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    store = open_signal_store(sig, tok, 1.0)
    assert set(store.example_ids()) == {p["id"] for p in pairs}
    build_features(pairs, tok, 64, True, targets=store)
    capsys.readouterr()
    assert args.func(args) == 0
    assert "up to date, skipped" in capsys.readouterr().err
    args = parser.parse_args(["capture", str(tmp_path / "c.yaml"), "--format", "topk", "--k", "3"])
    assert args.func(args) == 0
    assert read_json(sig / "manifest.json")["format"] == "topk"
    bad = parser.parse_args(["capture", str(tmp_path / "c.yaml"), "teacher.model=openai:gpt-x"])
    with pytest.raises(UserError, match="local model directory"):
        bad.func(bad)


def test_dense_store_collates_to_probs_only(tmp_path, tiny_teacher_dir, tiny_student_dir, make_pairs):
    pairs = make_pairs(3)
    capture_signals(tiny_teacher_dir, pairs, tmp_path / "s", fmt="dense")
    tok = load_tokenizer(tiny_student_dir, padding_side="right")
    feats = build_features(pairs, tok, 256, True, targets=open_signal_store(tmp_path / "s", tok, 1.0))
    batch = Collator(tok.pad_token_id)(feats)
    assert "target_ids" not in batch and batch["target_probs"].shape[-1] == len(tok)
    resp = batch["labels"] != -100
    assert torch.allclose(batch["target_probs"].sum(-1)[resp], torch.tensor(1.0), atol=2e-3)
