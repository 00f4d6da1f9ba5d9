"""Bytes per token and gradient fidelity of each signal-store format at V=128256 (CPU).

Synthetic but structured teacher and student distributions over a Llama-3-sized vocabulary
(V = 128256), for ``--positions`` response positions (4 examples of equal length):

* a Zipf-Mandelbrot unigram prior ``-1.1 log(rank + 10)`` over a random permutation of the ids
  (frequent tokens recur across positions, as in text);
* the *student* is a linear model: logits ``z_s = prior + s_t * (x_t B) W^T`` with hidden states
  ``x_t`` (d = 64, anisotropic: a shared mean direction plus noise, cosine ~0.5 between
  positions), a per-position confidence ``s_t`` (log-normal), lm_head ``W`` [V, d] and a body ``B``
  [d, d] (``= I`` where the gradient is taken);
* the *teacher* knows more: ``z_t = 1.1 z_s + 1.5 (u_t A^T)`` with a rank-32 term the student
  lacks (student KL ~0.5 nats).

Two profiles (teacher statistics are printed and returned under ``teacher``):

* ``chat`` (primary: ``formats``, ``acceptance``): the teacher scoring its own answers, which is
  what ``potstill capture`` does (teacher-forced on the generate stage's output). ``s`` around 9:
  mean teacher entropy ~1.1-1.3 nats, mean top-1 probability ~0.65, and about half the positions
  have their own argmax token (as diverse as text). Instruction-tuned teachers on their own greedy
  answers are more peaked than this (top-1 ~0.8): the profile errs on the hard side.
* ``web`` (``profiles.web``): pre-training-like text, flatter: ``s`` around 7: entropy ~1.5-1.9
  nats, top-1 ~0.55-0.6.

Each format is *written with the real store writer* (:func:`potstill.signals.encode_rows`,
:func:`~potstill.signals.write_shard`, :func:`~potstill.signals.write_manifest`) from the teacher
logits and read back with :class:`potstill.signals.SignalStore`. Its sparse target's gradient is
compared with full KD's on the same positions:

* ``grad_angle_deg`` / ``norm_ratio``: w.r.t. the student's parameters ``W`` and ``B`` (what the
  optimizer sees for this batch): the angle to the full-KD gradient and sparse norm / full norm;
* ``logit_grad_angle_deg`` / ``logit_norm_ratio``: the per-position gradients w.r.t. the logits,
  concatenated (stricter: nothing averages over positions).

The loss is :func:`potstill.losses.sparse_target_loss` (student cross-entropy against the sparse
target), full KD is :func:`potstill.losses.forward_kl`. Their logit gradients are used in closed
form (``p_s * sum(pi) - scatter(pi)`` and ``p_s - p_t``; autograd over ``[1024, 128256]`` takes
~15 s a format on 2 cores) and checked against autograd through those two functions on 16
positions per format (``max_abs_grad_diff_vs_autograd``).

Bytes: ``bytes_per_token`` is the marginal on-disk cost: (all files of the 4-example store - all
files of the same store with 2 examples) / the difference in positions, i.e. the shard rows plus
the examples' index entries, without the store's constant part (manifest header, ``.npy``
headers); ``store_bytes_per_token`` is all files / positions of this small store (constants
included); ``shard_bytes_per_token`` the shard arrays only.

Formats: ``dense`` (float16 rows), ``topk`` (k=12 renormalised over the 12: the usual top-k KD),
``topk_drop`` (the same store read with the tail dropped: rows sum to 1 - tail), ``sampled``
(N=64 systematic draws: the default) and ``sampled_multinomial`` (N=64 i.i.d. draws), plus
``sampled_sweep``: systematic sampling at N = 16 ... 96 (primary profile), and ``sampled_seeds``:
the default sampled store on three random problems of each profile. ``acceptance`` takes the worst
of the primary profile's seeds.

Last line of output: one JSON object (``formats``, ``profiles``, ``sampled_sweep``, ``teacher``,
``sampled_worst_over_seeds``, ``acceptance``).

    python benchmarks/signal_store.py                      # 1024 positions, both profiles (~5 min, ~5 GB)
    python benchmarks/signal_store.py --positions 512 --no-web
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from potstill.signals import SignalStore, encode_rows, write_manifest, write_shard

try:
    from potstill.losses import sparse_target_loss
except ImportError:  # older losses module: the same estimator, written out
    import torch.nn.functional as _F

    def sparse_target_loss(student_logits, target_ids, target_probs, mask, temperature=1.0):
        log_q = _F.log_softmax(student_logits.float() / temperature, -1).gather(-1, target_ids.long())
        pi = torch.where(mask.unsqueeze(-1), target_probs.float(), torch.zeros_like(target_probs.float()))
        return -(pi * log_q).sum(-1)


from potstill.losses import forward_kl

V = 128256
D = 64
K = 12
DRAWS = 64
SEEDS = (0, 1, 2)
EXAMPLES = 4
PROFILES = {"chat": {"prior": 1.0, "scale": 9.0, "gap": 1.5}, "web": {"prior": 1.0, "scale": 7.0, "gap": 1.5}}


class Problem:
    """Teacher and student distributions of one profile, and the full-KD gradient.

    Gradients are in closed form, a chunk of positions at a time (the autograd graph of a
    ``[positions, 128256]`` loss is slow on 2 cores): for a sparse target ``(ids, pi)`` the
    gradient of :func:`~potstill.losses.sparse_target_loss` w.r.t. the logits is
    ``G = p_s * sum(pi) - scatter(pi)``; full KD's (:func:`~potstill.losses.forward_kl`) is
    ``p_s - p_t``. The student's logits are ``prior + s * (X B) W^T`` (``B = I``), so
    ``dW = G^T (s X)`` and ``dB = X^T (s * (G W))``. :meth:`check` verifies ``G`` against
    autograd through the project's losses on a slice of positions.
    """

    def __init__(self, positions: int, prior: float, scale: float, gap: float, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        rank = torch.randperm(V, generator=g)
        self.prior = prior * -1.1 * torch.log(rank.float() + 10)
        mu = torch.randn(D, generator=g)
        self.W = torch.randn(V, D, generator=g) / math.sqrt(D)
        self.X = 0.7 * mu + 0.7 * torch.randn(positions, D, generator=g)
        self.s = torch.exp(math.log(scale) + 0.35 * torch.randn(positions, 1, generator=g))
        self.zs = self.prior + self.s * (self.X @ self.W.T)
        u2 = torch.randn(positions, 32, generator=g)
        a2 = torch.randn(V, 32, generator=g) / math.sqrt(32)
        self.zt = 1.1 * self.zs + gap * (u2 @ a2.T)
        self.ps = torch.softmax(self.zs, -1)
        self.pt = torch.softmax(self.zt, -1)
        self.sX = self.s * self.X
        self.ps_W = self.ps @ self.W  # [P, d]
        self.ps_sq = (self.ps * self.ps).sum(-1)
        self.ps_dot_gf = (self.ps * (self.ps - self.pt)).sum(-1)
        dW = self.ps.T @ self.sX - self.pt.T @ self.sX
        dB = self.X.T @ (self.s * (self.ps_W - self.pt @ self.W))
        self.full = torch.cat([dW.flatten(), dB.flatten()]).double()
        self.full_logit_sq = float(((self.ps - self.pt) ** 2).sum(-1).double().sum())

    def stats(self) -> dict:
        lpt = torch.log_softmax(self.zt, -1)
        ent = -(self.pt * lpt).sum(-1)
        kl = (self.pt * (lpt - torch.log_softmax(self.zs, -1))).sum(-1)
        top = self.pt.argmax(-1)
        return {
            "entropy_nats": round(float(ent.mean()), 3),
            "top1_prob": round(float(self.pt.max(-1).values.mean()), 3),
            "student_kl_nats": round(float(kl.mean()), 3),
            "distinct_argmax": int(top.unique().numel()),
            "top1_agreement": round(float((top == self.zs.argmax(-1)).float().mean()), 3),
        }

    def sparse(self, ids: torch.Tensor, pi: torch.Tensor) -> dict:
        """Angle and norm ratio of the sparse target's gradient vs full KD (params and logits)."""
        w = pi.sum(-1)
        if ids.shape[1] == V:  # dense rows
            dW = self.ps.T @ (w[:, None] * self.sX) - pi.T @ self.sX
            gw = w[:, None] * self.ps_W - pi @ self.W
            gs_sq = ((self.ps * w[:, None] - pi) ** 2).sum(-1).double().sum()
            dot = ((self.ps * w[:, None] - pi) * (self.ps - self.pt)).sum(-1).double().sum()
        else:
            dW = self.ps.T @ (w[:, None] * self.sX)
            dW.index_add_(0, ids.reshape(-1), -(pi[..., None] * self.sX[:, None, :]).reshape(-1, D))
            gw = w[:, None] * self.ps_W - (pi[..., None] * self.W[ids]).sum(1)
            ps_at, pt_at = self.ps.gather(1, ids), self.pt.gather(1, ids)
            # nonzero targets have distinct ids within a row, so |scatter(pi)|^2 = sum pi^2
            gs_sq = (w**2 * self.ps_sq - 2 * w * (pi * ps_at).sum(-1) + (pi**2).sum(-1)).double().sum()
            dot = (w * self.ps_dot_gf - (pi * (ps_at - pt_at)).sum(-1)).double().sum()
        dB = self.X.T @ (self.s * gw)
        angle, ratio = compare(torch.cat([dW.flatten(), dB.flatten()]), self.full)
        l_cos = float(dot) / math.sqrt(float(gs_sq) * self.full_logit_sq)
        return {
            "grad_angle_deg": round(angle, 2),
            "norm_ratio": round(ratio, 4),
            "logit_grad_angle_deg": round(math.degrees(math.acos(max(-1.0, min(1.0, l_cos)))), 2),
            "logit_norm_ratio": round(math.sqrt(float(gs_sq) / self.full_logit_sq), 4),
        }

    def check(self, ids: torch.Tensor, pi: torch.Tensor, n: int = 16) -> float:
        """Max |closed-form G - autograd G| on ``n`` positions, through the project's losses."""
        z = self.zs[:n].clone().requires_grad_(True)
        mask = torch.ones(n, dtype=torch.bool)
        sparse_target_loss(z, ids[:n], pi[:n], mask, 1.0).sum().backward()
        g = self.ps[:n] * pi[:n].sum(-1, keepdim=True)
        g = g.scatter_add(1, ids[:n].contiguous(), -pi[:n]) if ids.shape[1] != V else g - pi[:n]
        zf = self.zs[:n].clone().requires_grad_(True)
        forward_kl(zf, self.zt[:n], mask, 1.0).sum().backward()
        return max(float((z.grad - g).abs().max()), float((zf.grad - (self.ps[:n] - self.pt[:n])).abs().max()))


def compare(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    g, ref = g.double().flatten(), ref.double().flatten()
    cos = float(g @ ref / (g.norm() * ref.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))), float(g.norm() / ref.norm())


def encode(fmt: str, zt: torch.Tensor, *, k=None, draws=None, sampling="systematic") -> list:
    n = zt.shape[0] // EXAMPLES
    return [
        (
            f"ex{e}",
            encode_rows(
                fmt,
                zt[e * n : (e + 1) * n],
                1.0,
                k=k,
                draws=draws,
                sampling=sampling,
                rng=np.random.default_rng(1000 + e),
            ),
            f"{e:016x}",
        )
        for e in range(EXAMPLES)
    ]


def write_store(path: Path, fmt: str, rows: list, *, k=None, draws=None, sampling="systematic") -> SignalStore:
    """A one-shard store of ``rows`` written and reopened with the real store code."""
    record = write_shard(path, 0, fmt, rows, V, k=k, draws=draws)
    settings = {
        "format": fmt,
        "k": k if fmt == "topk" else (V if fmt == "dense" else None),
        "draws": draws,
        "sampling": sampling if fmt == "sampled" else None,
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
    (path / "shard-00000.json").unlink()  # capture folds shard records into the manifest
    return SignalStore(path, verify="open")


def read_targets(store: SignalStore, tail: str = "renormalize") -> tuple[torch.Tensor, torch.Tensor]:
    ids, probs = zip(*(store.get(f"ex{e}", tail=tail) for e in range(EXAMPLES)))
    if store.format == "dense":
        return torch.arange(V).expand(sum(i.shape[0] for i in ids), V), torch.from_numpy(np.concatenate(probs))
    k = max(i.shape[1] for i in ids)
    pad = lambda a: np.pad(a, ((0, 0), (0, k - a.shape[1])))  # noqa: E731 - id 0 / prob 0 padding
    return torch.from_numpy(np.concatenate([pad(i) for i in ids])), torch.from_numpy(
        np.concatenate([pad(p) for p in probs])
    )


def measure(prob: Problem, base: Path, label: str, fmt: str, rows: list, tail: str = "renormalize", **kw) -> dict:
    """Write the store (all examples, and half of them for the marginal bytes), read it back, compare."""
    full = write_store(base / label, fmt, rows, **kw)
    half = write_store(base / f"{label}-half", fmt, rows[: EXAMPLES // 2], **kw)
    ids, pi = read_targets(full, tail)
    positions = ids.shape[0]
    half_positions = sum(half.length(e) for e in half.example_ids())
    out = {
        "bytes_per_token": round((full.disk_bytes() - half.disk_bytes()) / (positions - half_positions), 2),
        "store_bytes_per_token": round(full.disk_bytes() / positions, 2),
        "shard_bytes_per_token": round(full.manifest["shard_bytes"] / positions, 2),
        **prob.sparse(ids, pi),
        "mean_ids_per_token": round(float((pi > 0).sum(-1).float().mean()), 2),
    }
    out["max_abs_grad_diff_vs_autograd"] = float(f"{prob.check(ids, pi):.2e}")
    shutil.rmtree(base / label, ignore_errors=True)
    shutil.rmtree(base / f"{label}-half", ignore_errors=True)
    return out


def run_profile(name: str, positions: int, tmp: Path, sweep: bool) -> dict:
    t0 = time.perf_counter()
    prob = Problem(positions, **PROFILES[name])
    stats = prob.stats()
    print(f"[{name}] teacher: {stats}", flush=True)
    out: dict = {"teacher": stats, "formats": {}}
    base = tmp / name
    topk = encode("topk", prob.zt, k=K)
    plan = [
        ("dense", "dense", encode("dense", prob.zt), "renormalize", {}),
        ("topk", "topk", topk, "renormalize", {"k": K}),
        ("topk_drop", "topk", topk, "drop", {"k": K}),
        ("sampled", "sampled", encode("sampled", prob.zt, draws=DRAWS), "renormalize", {"draws": DRAWS}),
        (
            "sampled_multinomial",
            "sampled",
            encode("sampled", prob.zt, draws=DRAWS, sampling="multinomial"),
            "renormalize",
            {"draws": DRAWS, "sampling": "multinomial"},
        ),
    ]
    for label, fmt, rows, tail, kw in plan:
        out["formats"][label] = measure(prob, base, label, fmt, rows, tail, **kw)
        print(f"[{name}] {label}: {out['formats'][label]}", flush=True)
    plan.clear()
    if sweep:
        out["sampled_sweep"] = {}
        for n in (16, 24, 32, 48, 64, 96):
            r = (
                out["formats"]["sampled"]
                if n == DRAWS
                else measure(prob, base, f"sweep{n}", "sampled", encode("sampled", prob.zt, draws=n), draws=n)
            )
            out["sampled_sweep"][str(n)] = r
            print(f"[{name}] sampled N={n}: {r}", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def sampled_seeds(name: str, positions: int, tmp: Path, first: dict) -> list[dict]:
    """The default sampled store on other random problems of the same profile (seed 0 is ``first``)."""
    rows = [
        {
            "seed": 0,
            **{k: first[k] for k in ("bytes_per_token", "grad_angle_deg", "norm_ratio")},
            "teacher_entropy_nats": None,
        }
    ]
    for seed in SEEDS[1:]:
        prob = Problem(positions, seed=seed, **PROFILES[name])
        r = measure(
            prob, tmp / f"{name}-seed{seed}", "sampled", "sampled", encode("sampled", prob.zt, draws=DRAWS), draws=DRAWS
        )
        rows.append(
            {
                "seed": seed,
                **{k: r[k] for k in ("bytes_per_token", "grad_angle_deg", "norm_ratio")},
                "teacher_entropy_nats": prob.stats()["entropy_nats"],
            }
        )
        print(f"[{name}] sampled, seed {seed}: {rows[-1]}", flush=True)
        del prob
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--no-web", action="store_true", help="only the primary (chat) profile")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.positions % EXAMPLES:
        ap.error(f"--positions must be a multiple of {EXAMPLES}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="signal_store_bench_") as d:
        chat = run_profile("chat", args.positions, Path(d), sweep=True)
        chat["sampled_seeds"] = sampled_seeds("chat", args.positions, Path(d), chat["formats"]["sampled"])
        chat["sampled_seeds"][0]["teacher_entropy_nats"] = chat["teacher"]["entropy_nats"]
        web = None
        if not args.no_web:
            web = run_profile("web", args.positions, Path(d), sweep=False)
            web["sampled_seeds"] = sampled_seeds("web", args.positions, Path(d), web["formats"]["sampled"])
            web["sampled_seeds"][0]["teacher_entropy_nats"] = web["teacher"]["entropy_nats"]
    seeds = chat["sampled_seeds"]
    worst = {
        "bytes_per_token": max(r["bytes_per_token"] for r in seeds),
        "grad_angle_deg": max(r["grad_angle_deg"] for r in seeds),
        "norm_ratio_max_dev": round(max(abs(r["norm_ratio"] - 1) for r in seeds), 4),
    }
    result = {
        "vocab_size": V,
        "positions": args.positions,
        "profile": "chat",
        "formats": chat["formats"],
        "teacher": chat["teacher"],
        "sampled_draws": DRAWS,
        "sampling": "systematic",
        "topk_k": K,
        "sampled_sweep": chat["sampled_sweep"],
        "profiles": {
            "chat": {"teacher": chat["teacher"], "formats": chat["formats"], "sampled_seeds": chat["sampled_seeds"]},
            **(
                {"web": {"teacher": web["teacher"], "formats": web["formats"], "sampled_seeds": web["sampled_seeds"]}}
                if web
                else {}
            ),
        },
        "sampled_worst_over_seeds": worst,
        "acceptance": {  # the primary profile, worst of the seeds
            "sampled_bytes_per_token_le_40": worst["bytes_per_token"] <= 40,
            "sampled_grad_angle_le_5deg": worst["grad_angle_deg"] <= 5,
            "sampled_norm_ratio_within_5pct": worst["norm_ratio_max_dev"] <= 0.05,
        },
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
