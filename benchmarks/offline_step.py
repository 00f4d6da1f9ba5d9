"""Training step time: offline sparse KD from a signal store vs plain cross-entropy (CPU).

One tiny student (a random Llama: hidden 128, 2 layers, 4 heads, V = 32000) and one data set
(``--examples`` sequences of 64 prompt + 192 response tokens, random ids), trained two ways
side by side, each with its own copy of the same initial weights and its own AdamW:

* ``ce``: plain cross-entropy on the response tokens -- what the train stage's ``sft`` method
  computes: :func:`potstill.losses.chunked_distillation_loss` with no teacher;
* ``kd``: offline sparse KD -- the batch's teacher targets read from a *sampled* signal store
  (N = 64 systematic draws per token, memory-mapped, sha256-verified on first read) through the
  training features' :class:`~potstill.train.data.TargetRef` and the
  :class:`~potstill.train.data.Collator` (``target_ids`` / ``target_probs``), then the same loss
  with ``target_ids`` / ``target_probs``, ``alpha = 0.5``, ``T = 1`` (how the trainer calls it);
* ``kd_fused``: the same targets and the same gradient, the loss called once with ``alpha = 1``
  on the mixed target (the label joins the teacher's ids with weight ``1 - alpha``): at T=1
  ``alpha * CE(pi) + (1 - alpha) * CE(label)`` *is* the cross-entropy against
  ``alpha * pi + (1 - alpha) * onehot``, so one softmax-gradient pass serves both terms.

The store is written by the real writer (:func:`potstill.signals.encode_rows` /
``write_shard`` / ``write_manifest``) from synthetic Zipf-like teacher logits (no teacher model
is needed to time the student's step: the step only reads the store).

A step is everything from taking the batch's features to the end of ``optimizer.step()``:
collate (the store read, for ``kd``), forward, loss, backward, update. The two arms alternate
step by step (``ce``, ``kd``, ``kd_fused``, ``ce``, ...) so that all see the same machine state;
after ``--warmup`` steps each, ``--steps`` steps each are timed (wall clock, and process CPU time)
and the medians compared. The 1-minute load average at start and end is reported: on a machine
shared with other busy processes the wall-clock figures are noisy.

Last line of output: one JSON object with ``time_ratio`` (median kd step / median ce step),
``time_ratio_fused`` (kd_fused / ce), the medians of the step-by-step paired ratios, the store
read (collate) times, and the setup.

    python benchmarks/offline_step.py                  # 20 timed steps each (~1-2 min)
    python benchmarks/offline_step.py --steps 10 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.signals import SignalStore, encode_rows, write_manifest, write_shard
from potstill.train.data import Collator, TargetRef

V, HIDDEN, LAYERS, HEADS = 32000, 128, 2, 4
PROMPT, RESPONSE = 64, 192
DRAWS, ALPHA = 64, 0.5

try:
    from potstill.losses import chunked_distillation_loss
except ImportError:  # older losses module: full logits, the same two terms
    chunked_distillation_loss = None


def make_student(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def make_data(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        ids = rng.integers(10, V, PROMPT + RESPONSE).tolist()
        feats.append({"id": f"ex{i}", "input_ids": ids, "labels": [-100] * PROMPT + ids[PROMPT:]})
    return feats


def make_store(path: Path, feats: list[dict], seed: int = 0) -> SignalStore:
    """A sampled store with one row per response token of every example (synthetic teacher)."""
    g = torch.Generator().manual_seed(seed)
    prior = -1.1 * torch.log(torch.randperm(V, generator=g).float() + 10)
    emb = torch.randn(V, 32, generator=g) / math.sqrt(32)
    rows = []
    for i, f in enumerate(feats):
        z = prior + 7.0 * (torch.randn(RESPONSE, 32, generator=g) @ emb.T)
        rows.append((f["id"], encode_rows("sampled", z, 1.0, draws=DRAWS, rng=np.random.default_rng(i)), None))
    record = write_shard(path, 0, "sampled", rows, V, draws=DRAWS)
    settings = {
        "format": "sampled",
        "k": None,
        "draws": DRAWS,
        "sampling": "systematic",
        "temperature": 1.0,
        "vocab_size": V,
    }
    write_manifest(
        path,
        settings,
        [record],
        {
            "teacher": {"path": "synthetic", "model_hash": "0" * 64},
            "tokenizer": {"path": "synthetic", "fingerprint": "0" * 64},
        },
    )
    return SignalStore(path)


def fuse(batch: dict) -> dict:
    """``alpha * KD + (1 - alpha) * CE`` at T=1 as one sparse target: the label joins the teacher's
    ids with weight ``1 - alpha`` (same gradient; the value differs by the constant ``alpha H(pi)``)."""
    labels = batch["labels"]
    ids = torch.cat([batch["target_ids"], labels.clamp(min=0)[..., None]], -1)
    probs = torch.cat([ALPHA * batch["target_probs"], (1 - ALPHA) * (labels != -100)[..., None].float()], -1)
    return {**batch, "target_ids": ids, "target_probs": probs, "alpha": 1.0}


def loss_fn(model, batch: dict) -> torch.Tensor:
    labels = batch["labels"]
    targets = labels[:, 1:]
    kw = {}
    if "target_probs" in batch:
        kw = dict(target_ids=batch["target_ids"][:, 1:], target_probs=batch["target_probs"][:, 1:])
    alpha = batch.get("alpha", ALPHA)
    if chunked_distillation_loss is not None:
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        total, n, _ = chunked_distillation_loss(
            hidden[:, :-1], model.lm_head.weight, targets, alpha=alpha, temperature=1.0, **kw
        )
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        mask = targets != -100
        ce = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
        total = ce.sum()
        if kw:
            kd = -(kw["target_probs"] * logp.gather(-1, kw["target_ids"])).sum(-1) * mask
            total = alpha * kd.sum() + (1 - alpha) * total
        n = mask.sum()
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load0 = round(os.getloadavg()[0], 2)
    feats = make_data(args.examples)
    collate = Collator(pad_token_id=0)
    with tempfile.TemporaryDirectory(prefix="offline_step_") as d:
        store = make_store(Path(d) / "signals", feats)
        kd_feats = [{**f, "target_ref": TargetRef(store, f["id"], RESPONSE)} for f in feats]
        ce_feats = [dict(f) for f in feats]
        base = make_student()
        arms = {}
        for name, fs in (("ce", ce_feats), ("kd", kd_feats), ("kd_fused", kd_feats)):
            model = copy.deepcopy(base).train()
            arms[name] = {
                "model": model,
                "opt": torch.optim.AdamW(model.parameters(), lr=1e-4),
                "feats": fs,
                "times": [],
                "collate": [],
                "cpu": [],
            }
        order = np.random.default_rng(0).permutation(args.examples)
        nb = args.examples // args.batch
        total = args.warmup + args.steps
        for step in range(total):
            idx = order[(step % nb) * args.batch : (step % nb + 1) * args.batch]
            for name, arm in arms.items():
                t0, c0 = time.perf_counter(), time.process_time()
                batch = collate([arm["feats"][i] for i in idx])
                if name == "kd_fused":
                    batch = fuse(batch)
                t1 = time.perf_counter()
                loss = loss_fn(arm["model"], batch)
                loss.backward()
                arm["opt"].step()
                arm["opt"].zero_grad(set_to_none=True)
                t2, c2 = time.perf_counter(), time.process_time()
                if step >= args.warmup:
                    arm["times"].append(t2 - t0)
                    arm["cpu"].append(c2 - c0)
                    arm["collate"].append(t1 - t0)
                if not torch.isfinite(loss):
                    raise SystemExit(f"{name}: non-finite loss at step {step}")
            if step >= args.warmup:
                print(
                    f"step {step:3d}: " + "  ".join(f"{n} {a['times'][-1]:.3f}s" for n, a in arms.items()), flush=True
                )
        k_mean = float(np.mean([(store.get(f["id"])[1] > 0).sum(-1).mean() for f in feats[:8]]))
        bytes_per_token = store.manifest["bytes_per_token"]
    med = {n: statistics.median(a["times"]) for n, a in arms.items()}
    result = {
        "time_ratio": round(med["kd"] / med["ce"], 4),
        "time_ratio_fused": round(med["kd_fused"] / med["ce"], 4),
        "ce_step_s": round(med["ce"], 4),
        "kd_step_s": round(med["kd"], 4),
        "kd_fused_step_s": round(med["kd_fused"], 4),
        "paired_ratio_median": round(
            statistics.median(k / c for k, c in zip(arms["kd"]["times"], arms["ce"]["times"])), 4
        ),
        "paired_ratio_fused_median": round(
            statistics.median(k / c for k, c in zip(arms["kd_fused"]["times"], arms["ce"]["times"])), 4
        ),
        "cpu_time_ratio": round(statistics.median(arms["kd"]["cpu"]) / statistics.median(arms["ce"]["cpu"]), 4),
        "cpu_time_ratio_fused": round(
            statistics.median(arms["kd_fused"]["cpu"]) / statistics.median(arms["ce"]["cpu"]), 4
        ),
        "kd_collate_s": round(statistics.median(arms["kd"]["collate"]), 5),
        "ce_collate_s": round(statistics.median(arms["ce"]["collate"]), 5),
        "steps": args.steps,
        "batch": args.batch,
        "tokens_per_step": args.batch * (PROMPT + RESPONSE),
        "response_tokens_per_step": args.batch * RESPONSE,
        "student": {
            "vocab": V,
            "hidden": HIDDEN,
            "layers": LAYERS,
            "params": sum(p.numel() for p in base.parameters()),
        },
        "store": {
            "format": "sampled",
            "draws": DRAWS,
            "mean_ids_per_token": round(k_mean, 2),
            "shard_bytes_per_token": bytes_per_token,
        },
        "loss": "chunked_distillation_loss" if chunked_distillation_loss is not None else "full-logit fallback",
        "alpha": ALPHA,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "load_avg_1m": {"start": load0, "end": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
